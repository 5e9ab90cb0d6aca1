//! The journey state machine: pure, deterministic, no I/O and no clock.
//!
//! Two inputs, each for one customer at an instant `now` the caller supplies:
//! - [`Engine::handle_event`]: an event arrived;
//! - [`Engine::wake`]: time passed (a wait, timeout, send window or quiet hours ended).
//!
//! Both mutate the [`Customer`] and append [`Decision`]s. `simulate` drives them with a virtual
//! clock and memory; `run` drives them with the system clock and a durable store. Dedupe of
//! events (same `source` + `id`) belongs to the store, which sees every customer.

pub mod compact;
pub mod context;
pub mod customer;
pub mod decision;
pub mod journey;
pub mod journeys;
mod rules;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::Value;

pub use customer::{Customer, Order, OrderStatus, Orders, Profile};
pub use decision::{Action, Decision, EmailIntent};
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
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            min_gap: Period::ZERO,
            quiet_hours: None,
            max_event_age: Period(chrono::Duration::days(7)),
            timezone: Tz::UTC,
            bounce_stops_transactional: true,
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
        Engine { catalog, policy }
    }

    /// The instant `wake` next has work for this customer.
    pub fn next_due(c: &Customer) -> Option<DateTime<Utc>> {
        c.journeys.next_due()
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
                c.journeys.update(ji, |j| j.held = true);
                self.push(
                    c,
                    ji,
                    now,
                    Action::Pause,
                    "paused by an operator".into(),
                    out,
                );
                Ok(())
            }
            Control::Resume => {
                c.journeys.update(ji, |j| j.held = false);
                self.push(
                    c,
                    ji,
                    now,
                    Action::Resume,
                    "resumed by an operator".into(),
                    out,
                );
                Ok(())
            }
            Control::Cancel => {
                let reason = "cancelled by an operator".into();
                self.end(c, ji, now, Action::Exit, reason, true, out);
                Ok(())
            }
        }
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
        self.exit_on(c, ev, now, out);
        self.goals(c, ev, now, out);
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
                tracing::error!(customer_id = %crate::redact::text(&c.profile.id), sequence = %j.sequence.name, "a journey loops without waiting; it ends");
                let reason = "loops without waiting".to_string();
                self.end(c, ji, now, Action::Exit, reason, false, out);
                continue;
            }
            match c.journeys[ji].state {
                State::Due { cause, .. } => self.due_step(c, ji, now, cause, None, out),
                State::WaitingFor { .. } => self.timed_out(c, ji, now, out),
                State::Paused => return,
            }
        }
        // Validation refuses loops without a wait, so only a stored state from an older,
        // looser version could get here; end what is still due rather than spin forever.
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

    fn exit_on(
        &self,
        c: &mut Customer,
        ev: &Arc<Event>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        for id in c.journeys.concerned(ev) {
            let Some(ji) = c.journeys.find(id) else {
                continue;
            };
            let j = &c.journeys[ji];
            if sees(j, ev) && j.sequence.exit_on.iter().any(|e| **e == *ev.kind) {
                let reason = format!("exit_on {}", ev.kind);
                // Ended by an event, not finished: the customer may enter again.
                self.end(c, ji, now, Action::Exit, reason, false, out);
            }
        }
    }

    fn goals(
        &self,
        c: &mut Customer,
        ev: &Arc<Event>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        c.goals.retain(|g| g.until >= now.min(ev.time));
        let mut i = 0;
        while i < c.goals.len() {
            let g = &c.goals[i];
            let seq = g.sequence.clone();
            let step = &seq.steps[g.step];
            let Some(goal) = &step.goal else {
                i += 1;
                continue;
            };
            let in_window = g.from <= ev.time && ev.time <= g.until;
            if *goal.event != *ev.kind
                || !in_window
                || !self.passes(goal.when.as_ref(), c, Some(ev), None)
            {
                i += 1;
                continue;
            }
            let g = c.goals.remove(i);
            out.push(Decision {
                at: now,
                customer: c.profile.id.clone(),
                journey: g.journey,
                sequence: g.sequence.name.clone(),
                version: g.sequence.version.clone(),
                step: Some(step.id.clone()),
                action: Action::Goal,
                reason: format!("{} within {}", goal.event, goal.within),
                subject: None,
                email: None,
            });
        }
    }

    fn wait_fors(
        &self,
        c: &mut Customer,
        ev: &Arc<Event>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        // The journeys waiting for this event, found by index: those are the only ones looked
        // up again (a step may add or end journeys, moving the others).
        let waiting = |j: &Journey| {
            !j.held
                && matches!(j.state, State::WaitingFor { .. })
                && sees(j, ev)
                && matches!(&j.sequence.steps[j.step].timing, Timing::WaitFor(w) if *w.event == *ev.kind)
        };
        for id in c.journeys.concerned(ev) {
            let Some(ji) = c.journeys.find(id) else {
                continue;
            };
            let j = &c.journeys[ji];
            if !waiting(j) {
                continue;
            }
            let Timing::WaitFor(w) = &j.sequence.steps[j.step].timing else {
                continue;
            };
            if !self.passes(w.when.as_ref(), c, Some(ev), Some(ji)) {
                continue;
            }
            self.due_step(c, ji, now, Cause::Event, Some(ev), out);
        }
    }

    fn resumes(
        &self,
        c: &mut Customer,
        ev: &Arc<Event>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        for id in c.journeys.paused() {
            let Some(ji) = c.journeys.find(id) else {
                continue;
            };
            let seq = c.journeys[ji].sequence.clone();
            if self.check(seq.pause_when.as_ref(), c, Some(ev), Some(ji)) {
                continue;
            }
            self.push(
                c,
                ji,
                now,
                Action::Resume,
                "pause_when no longer true".into(),
                out,
            );
            self.due_step(c, ji, now, Cause::Resumed, Some(ev), out);
        }
    }

    fn triggers(
        &self,
        c: &mut Customer,
        ev: &Arc<Event>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let catalog = self.catalog.clone();
        let too_old = now - ev.time > self.policy.max_event_age.0;
        for seq in catalog.triggered_by(&ev.kind) {
            // Backfill: replaying history must never mail customers about old orders.
            if too_old && !seq.category.is_transactional() {
                continue;
            }
            let order_id = match seq.journey {
                JourneyKind::PerOrder => match ev.order_id() {
                    Some(o) => Some(o),
                    None => continue,
                },
                JourneyKind::PerCustomer => None,
            };
            if self.may_enter(c, seq, order_id).is_err() {
                continue;
            }
            if let Some(when) = &seq.trigger.when {
                let order = ev.order_id().and_then(|o| c.order(o));
                let ctx = Ctx::new(&c.profile, Some(ev), order, None).into_value();
                if !eval(when, ctx, c) {
                    continue;
                }
            }
            let entry = Entry {
                sequence: seq.clone(),
                id: JourneyId::derive(&[&seq.name, &ev.source, &ev.id]),
                order_id,
                base: ev.time,
                reason: format!("trigger {}", ev.kind),
                backfill: too_old,
            };
            self.enter(c, entry, now, out);
        }
    }

    // ---- journeys -------------------------------------------------------------------------

    /// Whether the customer may start `seq` now; `Err` says why not.
    fn may_enter(
        &self,
        c: &Customer,
        seq: &Sequence,
        order_id: Option<&str>,
    ) -> Result<(), String> {
        if c.journeys.any_of(&seq.name, order_id) {
            return Err(format!("already in {}", seq.name));
        }
        match (seq.journey, order_id) {
            (JourneyKind::PerOrder, Some(o)) => {
                if c.order(o).is_some_and(|o| o.enrolled.contains(&seq.name)) {
                    return Err(format!("{} already ran for order {o}", seq.name));
                }
            }
            (JourneyKind::PerOrder, None) => return Err(format!("{} needs an order", seq.name)),
            (JourneyKind::PerCustomer, _) => {
                if !seq.reenter && c.finished.contains(&seq.name) {
                    return Err(format!("{} already done (reenter: false)", seq.name));
                }
            }
        }
        Ok(())
    }

    /// Enrols the customer: `enter`, then the first step counts from `e.base`.
    fn enter(&self, c: &mut Customer, e: Entry<'_>, now: DateTime<Utc>, out: &mut Vec<Decision>) {
        if let Some(o) = e.order_id {
            c.order_mut(o).enrolled.push(e.sequence.name.clone());
        }
        let ji = c.journeys.push(Journey {
            id: e.id,
            sequence: e.sequence,
            order_id: e.order_id.map(Arc::from),
            started_at: now,
            step: 0,
            state: State::Paused,
            backfill: e.backfill,
            held: false,
        });
        self.push(c, ji, now, Action::Enter, e.reason, out);
        // The order's refund or cancellation arrived before the trigger (events racing each
        // other): the journey ends at once, as it would have had they come in order.
        let seq = &c.journeys[ji].sequence;
        if let Some(kind) = e
            .order_id
            .and_then(|o| c.order(o))
            .and_then(|o| o.ended_by(&seq.exit_on))
        {
            let reason = format!("exit_on {kind}: received before the trigger");
            return self.end(c, ji, now, Action::Exit, reason, false, out);
        }
        self.begin_step(c, ji, e.base);
    }

    /// Starts waiting for the current step, counting from `base`.
    fn begin_step(&self, c: &mut Customer, ji: Ji, base: DateTime<Utc>) {
        c.journeys.update(ji, |j| {
            j.state = match &j.sequence.steps[j.step].timing {
                Timing::Now => State::Due {
                    at: base,
                    cause: Cause::Immediate,
                },
                Timing::Wait(p) => State::Due {
                    at: base + p.0,
                    cause: Cause::Waited,
                },
                Timing::WaitFor(w) => State::WaitingFor {
                    deadline: base + w.timeout.0,
                },
            };
        });
    }

    /// The current step is due: skip_when, pause_when, send window, then the action.
    fn due_step(
        &self,
        c: &mut Customer,
        ji: Ji,
        now: DateTime<Utc>,
        cause: Cause,
        ev: Option<&Arc<Event>>,
        out: &mut Vec<Decision>,
    ) {
        let seq = c.journeys[ji].sequence.clone();
        let si = c.journeys[ji].step;
        let step = &seq.steps[si];
        if let Some(skip) = &step.skip_when
            && self.check(Some(skip), c, ev, Some(ji))
        {
            self.push(c, ji, now, Action::Skip, format!("skip_when: {skip}"), out);
            return self.next_step(c, ji, now, out);
        }
        if let Some(pause) = &seq.pause_when
            && self.check(Some(pause), c, ev, Some(ji))
        {
            self.push(
                c,
                ji,
                now,
                Action::Pause,
                format!("pause_when: {pause}"),
                out,
            );
            c.journeys.update(ji, |j| j.state = State::Paused);
            return;
        }
        if let Some(window) = &step.send_window {
            let tz = self.timezone(&c.profile, &seq);
            // Marketing email must also miss quiet hours: look for an instant both allow, or
            // the two would defer each other forever.
            let marketing = matches!(step.action, Some(sequence::Action::Email { .. }))
                && !seq.step_category(si).is_transactional();
            let quiet = self.policy.quiet_hours.filter(|_| marketing);
            match next_allowed(window, quiet.as_ref(), tz, now) {
                Some(slot) if slot > now => {
                    let reason = format!(
                        "send_window \"{}\" ({tz}): until {}",
                        window.source,
                        rfc3339(slot)
                    );
                    self.push(c, ji, now, Action::Defer, reason, out);
                    c.journeys.update(ji, |j| {
                        j.state = State::Due {
                            at: slot,
                            cause: Cause::Window,
                        }
                    });
                    return;
                }
                Some(_) => {}
                None => {
                    let reason = match quiet {
                        Some(q) => format!(
                            "send_window \"{}\" never opens outside quiet hours {q}",
                            window.source
                        ),
                        None => format!("send_window \"{}\" has no future slot", window.source),
                    };
                    self.push(c, ji, now, Action::Skip, reason, out);
                    return self.next_step(c, ji, now, out);
                }
            }
        }
        match &step.action {
            None => {}
            Some(sequence::Action::Exit) => {
                return self.end(c, ji, now, Action::Exit, "exit step".into(), true, out);
            }
            Some(sequence::Action::Start { sequence }) => self.start(c, ji, sequence, now, out),
            Some(sequence::Action::Email { template }) => {
                match self.verdict(c, &seq, si, c.journeys[ji].backfill, now) {
                    Verdict::Send => self.email(c, ji, template, cause, now, out),
                    Verdict::Suppress(reason) => {
                        self.push(c, ji, now, Action::Suppress, reason, out)
                    }
                    Verdict::Defer(until, reason) => {
                        self.push(c, ji, now, Action::Defer, reason, out);
                        c.journeys.update(ji, |j| {
                            j.state = State::Due {
                                at: until,
                                cause: Cause::QuietHoursOver,
                            }
                        });
                        return;
                    }
                }
            }
        }
        self.next_step(c, ji, now, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn email(
        &self,
        c: &mut Customer,
        ji: Ji,
        template: &Arc<str>,
        cause: Cause,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let j = &c.journeys[ji];
        let seq = j.sequence.clone();
        let si = j.step;
        let order = j.order_id.as_deref().and_then(|o| c.order(o));
        // Templates see no `event`: the email is rendered again when it is sent, where the event
        // is long gone, and the subject printed here must be the one sent.
        let ctx = Ctx::new(&c.profile, None, order, Some(j)).into_value();
        let locale = c.profile.locale.as_deref();
        // The templates of the journey's version: an edit or a rename since it started is a
        // new version, for new journeys.
        let rendered = seq.templates.render_subject(template, locale, &ctx);
        // Release the context's share of the profile so the update below does not copy it.
        drop(ctx);
        let subject = match rendered {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(customer_id = %crate::redact::text(&c.profile.id), sequence = %seq.name, error = %e, "template error");
                return self.push(
                    c,
                    ji,
                    now,
                    Action::Suppress,
                    format!("template error: {e}"),
                    out,
                );
            }
        };
        let category = seq.step_category(si).clone();
        if !category.is_transactional() {
            Arc::make_mut(&mut c.profile).last_marketing_at = Some(now);
        }
        let reason = cause.describe(&seq.steps[si]);
        let mut d = self.decision(c, ji, now, Action::Email, reason);
        d.subject = Some(subject);
        d.email = Some(EmailIntent {
            template: template.clone(),
            transactional: category.is_transactional(),
            category: category.0,
            order_id: c.journeys[ji].order_id.clone(),
        });
        out.push(d);
        self.arm_goal(c, ji, now);
    }

    fn start(
        &self,
        c: &mut Customer,
        ji: Ji,
        target: &str,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let parent = &c.journeys[ji];
        let (pid, pseq, order_id, backfill) = (
            parent.id,
            parent.sequence.clone(),
            parent.order_id.clone(),
            parent.backfill,
        );
        let step_id = pseq.steps[parent.step].id.clone();
        let Some(seq) = self.catalog.get(target).cloned() else {
            let reason = format!("{target} is not loaded");
            return self.push(c, ji, now, Action::Start, reason, out);
        };
        let order_id = match seq.journey {
            JourneyKind::PerOrder => order_id.as_deref(),
            JourneyKind::PerCustomer => None,
        };
        let refusal = if backfill && !seq.category.is_transactional() {
            // Backfill reaches marketing neither by trigger nor through a transactional hand-over.
            Err(BACKFILL.to_string())
        } else {
            self.may_enter(c, &seq, order_id)
        };
        if let Err(why) = refusal {
            return self.push(
                c,
                ji,
                now,
                Action::Start,
                format!("not started: {why}"),
                out,
            );
        }
        self.push(c, ji, now, Action::Start, format!("start {target}"), out);
        self.arm_goal(c, ji, now);
        let entry = Entry {
            id: JourneyId::derive(&[&seq.name, &pid.to_string(), &step_id]),
            reason: format!("started by {}/{}", pseq.name, step_id),
            sequence: seq,
            order_id,
            base: now,
            backfill,
        };
        self.enter(c, entry, now, out);
    }

    fn arm_goal(&self, c: &mut Customer, ji: Ji, now: DateTime<Utc>) {
        let j = &c.journeys[ji];
        if let Some(goal) = &j.sequence.steps[j.step].goal {
            c.goals.push(PendingGoal {
                journey: j.id,
                sequence: j.sequence.clone(),
                step: j.step,
                from: now,
                until: now + goal.within.0,
            });
        }
    }

    fn timed_out(&self, c: &mut Customer, ji: Ji, now: DateTime<Utc>, out: &mut Vec<Decision>) {
        let seq = c.journeys[ji].sequence.clone();
        let Timing::WaitFor(w) = &seq.steps[c.journeys[ji].step].timing else {
            return;
        };
        let what = format!("wait_for {} timed out after {}", w.event, w.timeout);
        match w.on_timeout {
            OnTimeout::Skip => {
                self.push(c, ji, now, Action::Skip, what, out);
                self.next_step(c, ji, now, out);
            }
            OnTimeout::Continue => self.due_step(c, ji, now, Cause::TimeoutContinue, None, out),
            OnTimeout::Exit => self.end(c, ji, now, Action::Exit, what, true, out),
            OnTimeout::Goto(target) => {
                let reason = format!("{what}: go to {}", seq.steps[target].id);
                self.push(c, ji, now, Action::Skip, reason, out);
                c.journeys.update(ji, |j| j.step = target);
                self.begin_step(c, ji, now);
            }
        }
    }

    /// The step finished at `now`: on to the next, or `complete`.
    fn next_step(&self, c: &mut Customer, ji: Ji, now: DateTime<Utc>, out: &mut Vec<Decision>) {
        let more = c.journeys.update(ji, |j| {
            j.step += 1;
            j.step < j.sequence.steps.len()
        });
        match more {
            Some(true) => return self.begin_step(c, ji, now),
            Some(false) => {}
            None => return,
        }
        self.end(
            c,
            ji,
            now,
            Action::Complete,
            "all steps done".into(),
            true,
            out,
        );
    }

    /// Ends a journey with an `exit` or `complete` line. `finished` journeys count for
    /// `reenter: false`; one ended by an `exit_on` event does not.
    #[allow(clippy::too_many_arguments)]
    fn end(
        &self,
        c: &mut Customer,
        ji: Ji,
        now: DateTime<Utc>,
        action: Action,
        reason: String,
        finished: bool,
        out: &mut Vec<Decision>,
    ) {
        let mut d = self.decision(c, ji, now, action, reason);
        if action == Action::Complete {
            d.step = None;
        }
        out.push(d);
        let Some(j) = c.journeys.remove(ji) else {
            return;
        };
        if finished
            && j.sequence.journey == JourneyKind::PerCustomer
            && !c.finished.contains(&j.sequence.name)
        {
            c.finished.push(j.sequence.name.clone());
        }
    }

    // ---- helpers --------------------------------------------------------------------------

    fn decision(
        &self,
        c: &Customer,
        ji: Ji,
        now: DateTime<Utc>,
        action: Action,
        reason: String,
    ) -> Decision {
        let j = &c.journeys[ji];
        Decision {
            at: now,
            customer: c.profile.id.clone(),
            journey: j.id,
            sequence: j.sequence.name.clone(),
            version: j.sequence.version.clone(),
            step: j.step_id().cloned(),
            action,
            reason,
            subject: None,
            email: None,
        }
    }

    fn push(
        &self,
        c: &Customer,
        ji: Ji,
        now: DateTime<Utc>,
        action: Action,
        reason: String,
        out: &mut Vec<Decision>,
    ) {
        out.push(self.decision(c, ji, now, action, reason));
    }

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

    /// The first instant at or after `at` when step `step` of `seq` may send to the customer of
    /// profile `p`:
    /// inside its `send_window` and, for marketing, outside quiet hours (what a retry of its
    /// email waits for). `at` itself when neither applies; `None` if no such instant comes.
    pub fn send_slot(
        &self,
        p: &Profile,
        seq: &Sequence,
        step: usize,
        at: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let tz = self.timezone(p, seq);
        let quiet = self
            .policy
            .quiet_hours
            .filter(|_| !seq.step_category(step).is_transactional());
        match seq.steps.get(step).and_then(|s| s.send_window.as_ref()) {
            Some(window) => next_allowed(window, quiet.as_ref(), tz, at),
            None => Some(quiet.and_then(|q| q.end_if_inside(at, tz)).unwrap_or(at)),
        }
    }

    /// Customer's timezone, else the sequence's, else the configured default.
    fn timezone(&self, p: &Profile, seq: &Sequence) -> Tz {
        p.timezone.or(seq.timezone).unwrap_or(self.policy.timezone)
    }
}

/// The first instant at or after `now` in the window's slots and outside quiet hours; `None`
/// if the window has no such slot within a year's worth of tries.
fn next_allowed(
    window: &CronWindow,
    quiet: Option<&QuietHours>,
    tz: Tz,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let mut at = now;
    for _ in 0..400 {
        let slot = window.next_slot(at, tz)?;
        match quiet.and_then(|q| q.end_if_inside(slot, tz)) {
            Some(end) => at = end,
            None => return Some(slot),
        }
    }
    None
}

/// A failing expression counts as false, and says so in the log.
fn eval(expr: &Expr, ctx: Value, c: &Customer) -> bool {
    expr.eval(ctx).unwrap_or_else(|e| {
        tracing::warn!(customer_id = %crate::redact::text(&c.profile.id), expression = %expr, error = %e, "expression failed; taken as false");
        false
    })
}
