//! The journey state machine: pure, deterministic, no I/O and no clock.
//!
//! Two inputs, each for one customer at an instant `now` the caller supplies:
//! - [`Engine::handle_event`]: an event arrived;
//! - [`Engine::wake`]: time passed (a wait, timeout, send window or quiet hours ended).
//!
//! Both mutate the [`Customer`] and append [`Decision`]s. `simulate` drives them with a virtual
//! clock and memory; `run` drives them with the system clock and a durable store. Dedupe of
//! events (same `source` + `id`) belongs to the store, which sees every customer.
//!
//! This module holds the inputs and the due-step loop; `events` is what an event does to the
//! journeys, `steps` runs a step and records its decision, `windows` says when a step may
//! send, `rules` decides whether an email goes out.

pub mod compact;
pub mod context;
pub mod coupon;
pub mod customer;
pub mod dates;
pub mod decision;
mod events;
pub mod experiment;
pub mod intervals;
pub mod journey;
pub mod journeys;
mod rules;
mod steps;
mod windows;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::Value;

pub use customer::{Customer, Order, OrderStatus, Orders, Profile};
pub use decision::{Action, Channel, Decision, EmailIntent};
pub use journey::{Cause, Journey, JourneyId, PendingGoal, State};
pub use journeys::{Changed, Ji, Journeys};

/// What an operator can do to a journey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the customer has no journey in flight with this id")]
    NoSuchJourney,
    #[error("the journey is already paused")]
    AlreadyPaused,
    #[error("the journey is not paused")]
    NotPaused,
}

use crate::event::Event;
use crate::sequence::{self, Catalog, Expr, JourneyKind, OnTimeout, Sequence, Timing};
use crate::time::{CronWindow, Period, QuietHours, rfc3339};
use context::Ctx;
use journeys::sees;
use rules::Verdict;

/// The sending policy (`policy.*` in the config).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Least time between two marketing emails to one customer; zero is off.
    pub min_gap: Period,
    pub quiet_hours: Option<QuietHours>,
    /// Older events update profiles and end journeys but enrol nobody into marketing.
    pub max_event_age: Period,
    /// For customers without a timezone, when the sequence names none.
    pub timezone: Tz,
    /// A bounced address gets no transactional email either.
    pub bounce_stops_transactional: bool,
    /// Customers held out of every marketing sequence (`experiments.global_holdout`).
    pub global_holdout: Option<experiment::GlobalHoldout>,
    /// What generated coupon codes are derived under ([`coupon::key_from`] the signing key);
    /// `None` without a signing key (`simulate` then derives them under an empty key, and
    /// says so; `run` refuses a sequence that generates codes).
    pub coupon_key: Option<Arc<[u8]>>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            min_gap: Period::ZERO,
            quiet_hours: None,
            max_event_age: Period(chrono::Duration::days(7)),
            timezone: Tz::UTC,
            bounce_stops_transactional: true,
            global_holdout: None,
            coupon_key: None,
        }
    }
}

/// Why backfilled journeys send no marketing.
const BACKFILL: &str = "backfill: the triggering event is older than policy.max_event_age";

/// Steps one customer may run in one call at least (more with many journeys due); only a
/// broken sequence could reach it.
const STEP_BUDGET: usize = 10_000;

pub struct Engine {
    pub catalog: Arc<Catalog>,
    pub policy: Policy,
    /// The store's reorder intervals, for `after: auto` (shared, written by one reader).
    pub intervals: Arc<intervals::Intervals>,
}

/// A journey about to start.
struct Entry<'a> {
    sequence: Arc<Sequence>,
    id: JourneyId,
    order_id: Option<&'a str>,
    /// The first step's wait counts from here (the trigger's time, or now for `start`).
    base: DateTime<Utc>,
    reason: String,
    /// Started by an event older than `policy.max_event_age` (see [`Journey::backfill`]).
    backfill: bool,
}

impl Engine {
    pub fn new(catalog: Arc<Catalog>, policy: Policy) -> Engine {
        Engine {
            catalog,
            policy,
            intervals: Arc::default(),
        }
    }

    /// The code `step`'s `coupon` gives `customer`'s message with idempotency key `key`
    /// (`journey:step`): the same when the engine decides it and when the outbox renders it.
    pub fn coupon_for(&self, step: &sequence::Step, customer: &str, key: &str) -> Option<String> {
        let secret = self.policy.coupon_key.as_deref().unwrap_or_default();
        coupon::code_for(step, secret, customer, key)
    }

    /// This engine on another catalog (a reload): the same policy and reorder intervals.
    pub fn reloaded(&self, catalog: Arc<Catalog>) -> Engine {
        Engine {
            catalog,
            policy: self.policy.clone(),
            intervals: self.intervals.clone(),
        }
    }

    /// Reads the reorder intervals from `intervals`.
    pub fn with_intervals(mut self, intervals: Arc<intervals::Intervals>) -> Engine {
        self.intervals = intervals;
        self
    }

    /// The instant `wake` next has work for this customer.
    pub fn next_due(c: &Customer) -> Option<DateTime<Utc>> {
        let date = c.dates.iter().filter_map(|d| d.at).min();
        match (c.journeys.next_due(), date) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A permanent delivery failure: nothing more is sent to this address until it changes.
    pub fn mark_bounced(c: &mut Customer) {
        Arc::make_mut(&mut c.profile).bounced = true;
    }

    /// Runs every step due at or before `now`.
    pub fn wake(&self, c: &mut Customer, now: DateTime<Utc>, out: &mut Vec<Decision>) {
        self.run_due(c, now, None, out);
    }

    /// An operator's pause, resume or cancel of one journey (the admin API). A resumed
    /// journey whose step fell due while paused runs at the next [`Engine::wake`]; a cancelled
    /// one ends with `exit` and counts as finished (`reenter: false` keeps the customer out).
    pub fn control(
        &self,
        c: &mut Customer,
        journey: JourneyId,
        op: Control,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) -> Result<(), ControlError> {
        let ji = c
            .journeys
            .find(journey)
            .ok_or(ControlError::NoSuchJourney)?;
        match op {
            Control::Pause if c.journeys[ji].held => Err(ControlError::AlreadyPaused),
            Control::Resume if !c.journeys[ji].held => Err(ControlError::NotPaused),
            Control::Pause => {
                self.hold(c, ji, true, now, out);
                Ok(())
            }
            Control::Resume => {
                self.hold(c, ji, false, now, out);
                Ok(())
            }
            Control::Cancel => {
                let reason = "cancelled by an operator".into();
                self.end(c, ji, now, Action::Exit, reason, true, out);
                Ok(())
            }
        }
    }

    /// An operator's hold on journey `ji` put on (`held`: a pause) or lifted (a resume).
    fn hold(
        &self,
        c: &mut Customer,
        ji: Ji,
        held: bool,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let (action, reason) = if held {
            (Action::Pause, "paused by an operator")
        } else {
            (Action::Resume, "resumed by an operator")
        };
        c.journeys.update(ji, |j| j.held = held);
        self.push(c, ji, now, action, reason.into(), out);
    }

    /// Applies one event (already deduplicated) to its customer.
    ///
    /// Steps that become due at the event's instant or later are left for [`Engine::wake`]:
    /// the caller wakes the customer once every event of that instant has been applied, so an
    /// event always goes before a step due at the same instant (SPEC: ties). `simulate` does it
    /// from its queue, `run` at the end of each batch.
    pub fn handle_event(
        &self,
        c: &mut Customer,
        ev: &Arc<Event>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        if matches!(ev.data, crate::event::EventData::CustomerErased) {
            // Forgotten whole, at once: nothing due runs first, no journey says goodbye.
            *c = Customer::new(c.profile.id.clone());
            return;
        }
        // Steps due before the event happened ran before it in time, even when the event is
        // processed late; at the same instant the event goes first (SPEC: ties).
        self.run_due(c, now, Some(ev.time), out);
        c.apply(ev);
        self.schedule_dates(c, ev, now);
        self.measure(c, ev);
        self.exit_on(c, ev, now, out);
        self.goals(c, ev, now, out);
        self.redeemed(c, ev, now, out);
        self.wait_fors(c, ev, now, out);
        self.resumes(c, ev, now, out);
        self.triggers(c, ev, now, out);
    }

    fn run_due(
        &self,
        c: &mut Customer,
        now: DateTime<Utc>,
        before: Option<DateTime<Utc>>,
        out: &mut Vec<Decision>,
    ) {
        // Each journey may run at most a few times its steps at one instant (validation refuses
        // loops without a wait, so only a stored state of an older, looser version could run
        // more); past that only that journey ends. The whole call is bounded besides.
        if !c.dates.is_empty() {
            self.fire_dates(c, now, before, out);
        }
        let mut runs: HashMap<JourneyId, usize> = HashMap::new();
        let cap = STEP_BUDGET.max(64 * (c.journeys.len() + 1));
        for _ in 0..cap {
            let Some(ji) = c.journeys.first_due(now, before) else {
                return;
            };
            let j = &c.journeys[ji];
            let n = runs.entry(j.id).or_default();
            *n += 1;
            if *n > 2 * j.sequence.steps.len() + 16 {
                self.end_looping(c, ji, now, out);
                continue;
            }
            match c.journeys[ji].state {
                State::Due { cause, .. } => self.due_step(c, ji, now, cause, None, out),
                State::WaitingFor { .. } => self.timed_out(c, ji, now, out),
                State::Paused => return,
            }
        }
        self.budget_exhausted(c, now, out);
    }

    /// Journey `ji` ran past its limit at one instant: it ends.
    fn end_looping(&self, c: &mut Customer, ji: Ji, now: DateTime<Utc>, out: &mut Vec<Decision>) {
        let j = &c.journeys[ji];
        tracing::error!(customer_id = %crate::redact::text(&c.profile.id), sequence = %j.sequence.name, "a journey loops without waiting; it ends");
        let reason = "loops without waiting".to_string();
        self.end(c, ji, now, Action::Exit, reason, false, out);
    }

    /// The call ran out of steps. Validation refuses loops without a wait, so only a stored
    /// state from an older, looser version could get here; end what is still due rather than
    /// spin forever.
    fn budget_exhausted(&self, c: &mut Customer, now: DateTime<Utc>, out: &mut Vec<Decision>) {
        tracing::error!(customer_id = %crate::redact::text(&c.profile.id), "step budget exhausted: a sequence loops without waiting");
        while let Some(ji) = c.journeys.first_due(now, None) {
            self.end(
                c,
                ji,
                now,
                Action::Exit,
                "loops without waiting".into(),
                false,
                out,
            );
        }
    }

    // ---- event effects --------------------------------------------------------------------

    // ---- journeys -------------------------------------------------------------------------

    // ---- helpers --------------------------------------------------------------------------

    /// Evaluates an optional condition for a journey (absent = false).
    fn check(
        &self,
        expr: Option<&Expr>,
        c: &Customer,
        ev: Option<&Arc<Event>>,
        ji: Option<Ji>,
    ) -> bool {
        let Some(expr) = expr else {
            return false;
        };
        let j = ji.map(|i| &c.journeys[i]);
        let order_id = j
            .and_then(|j| j.order_id.as_deref())
            .or_else(|| ev.and_then(|e| e.order_id()));
        let order = order_id.and_then(|o| c.order(o));
        eval(expr, Ctx::new(&c.profile, ev, order, j).into_value(), c)
    }

    /// A filter (`when`): absent means every event passes.
    fn passes(
        &self,
        when: Option<&Expr>,
        c: &Customer,
        ev: Option<&Arc<Event>>,
        ji: Option<Ji>,
    ) -> bool {
        when.is_none() || self.check(when, c, ev, ji)
    }
}

/// A failing expression counts as false, and says so in the log.
fn eval(expr: &Expr, ctx: Value, c: &Customer) -> bool {
    expr.eval(ctx).unwrap_or_else(|e| {
        tracing::warn!(customer_id = %crate::redact::text(&c.profile.id), expression = %expr, error = %e, "expression failed; taken as false");
        false
    })
}
