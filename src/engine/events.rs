//! What an event does to a customer's journeys: exits, goals met, waits ended, pauses
//! lifted, and new journeys entered.

use super::experiment;
use super::*;

impl Engine {
    pub(super) fn exit_on(
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

    pub(super) fn goals(
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
            if !self.meets(goal, g, c, ev) {
                i += 1;
                continue;
            }
            let g = c.goals.remove(i);
            if !step.variants.is_empty() {
                self.variant_goal(c, &seq, &step.id);
            }
            out.push(goal_decision(c, g, step, goal, now));
        }
    }

    /// An order that uses a coupon code a step gave: that step's goal, once (SPEC §9), even
    /// after its journey ended.
    pub(super) fn redeemed(
        &self,
        c: &mut Customer,
        ev: &Arc<Event>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let crate::event::EventData::OrderPlaced(placed) = &ev.data else {
            return;
        };
        let Some(code) = placed.coupon.as_deref().map(str::trim) else {
            return;
        };
        let Some(given) = c
            .coupons
            .iter_mut()
            .find(|g| !g.redeemed && g.code.eq_ignore_ascii_case(code))
        else {
            return;
        };
        given.redeemed = true;
        out.push(Decision {
            at: now,
            customer: c.profile.id.clone(),
            journey: given.journey,
            sequence: given.sequence.clone(),
            version: given.version.clone(),
            step: Some(given.step.clone()),
            action: Action::Goal,
            reason: format!("coupon {} used on order {}", given.code, placed.order_id),
            subject: None,
            email: None,
        });
    }

    /// Whether `ev` meets `goal`, pending as `g`: its event, within the window, `when` true.
    #[inline]
    fn meets(&self, goal: &sequence::Goal, g: &PendingGoal, c: &Customer, ev: &Arc<Event>) -> bool {
        let in_window = g.from <= ev.time && ev.time <= g.until;
        *goal.event == *ev.kind && in_window && self.passes(goal.when.as_ref(), c, Some(ev), None)
    }

    pub(super) fn wait_fors(
        &self,
        c: &mut Customer,
        ev: &Arc<Event>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        // The journeys waiting for this event, found by index: those are the only ones looked
        // up again (a step may add or end journeys, moving the others).
        for id in c.journeys.concerned(ev) {
            let Some(ji) = c.journeys.find(id) else {
                continue;
            };
            let j = &c.journeys[ji];
            if !waits_for(j, ev) {
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

    pub(super) fn resumes(
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

    pub(super) fn triggers(
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
            let backfill = too_old && !seq.category.is_transactional();
            if seq.trigger.reorder.is_some() {
                // A late reorder still ends the earlier journeys; it starts none of its own.
                if trigger_holds(seq, c, ev) {
                    self.reorder(c, seq, ev, backfill, now, out);
                }
                continue;
            }
            if backfill {
                continue;
            }
            let order_id = match seq.journey {
                JourneyKind::PerOrder => match ev.order_id() {
                    Some(o) => Some(o),
                    None => continue,
                },
                JourneyKind::PerCustomer => None,
            };
            if self.may_enter(c, seq, order_id).is_err() || !trigger_holds(seq, c, ev) {
                continue;
            }
            let entry = Entry::triggered(seq, ev, order_id, too_old);
            self.enter(c, entry, now, out);
        }
    }

    /// Whether the customer may start `seq` now; `Err` says why not.
    pub(super) fn may_enter(
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
    pub(super) fn enter(
        &self,
        c: &mut Customer,
        e: Entry<'_>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        if let Some(o) = e.order_id {
            c.order_mut(o).enrolled.push(e.sequence.name.clone());
        }
        self.assign(c, &e.sequence, e.base);
        let reason = match self.group(c, &e.sequence) {
            Some(group) => format!("{}; {group}", e.reason),
            None => e.reason,
        };
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
        self.push(c, ji, now, Action::Enter, reason, out);
        if let Some(kind) = ended_before(c, ji, e.order_id) {
            let reason = format!("exit_on {kind}: received before the trigger");
            return self.end(c, ji, now, Action::Exit, reason, false, out);
        }
        self.begin_step(c, ji, e.base);
    }
}

impl Engine {
    /// The customer's group, for the `enter` line of a sequence with a holdout, or of any
    /// marketing sequence when they are in the global holdout.
    fn group(&self, c: &Customer, seq: &Sequence) -> Option<String> {
        let global = match seq.category.is_transactional() {
            true => None,
            false => self.policy.global_holdout.as_ref(),
        };
        global
            .and_then(|g| g.holds(&c.profile.id))
            .or_else(|| experiment::group_of(seq, &c.profile.id))
    }
}

impl<'a> Entry<'a> {
    /// A journey of `seq` that `ev` starts (for `order_id` when per order); its first step
    /// counts from the event's time.
    #[inline]
    fn triggered(
        seq: &Arc<Sequence>,
        ev: &Event,
        order_id: Option<&'a str>,
        backfill: bool,
    ) -> Entry<'a> {
        Entry {
            sequence: seq.clone(),
            id: JourneyId::derive(&[&seq.name, &ev.source, &ev.id]),
            order_id,
            base: ev.time,
            reason: format!("trigger {}", ev.kind),
            backfill,
        }
    }
}

/// The decision that goal `g` (of `step`) was met.
fn goal_decision(
    c: &Customer,
    g: PendingGoal,
    step: &sequence::Step,
    goal: &sequence::Goal,
    now: DateTime<Utc>,
) -> Decision {
    Decision {
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
    }
}

/// Whether journey `j` waits, not held, for an event of `ev`'s kind (and order).
#[inline]
fn waits_for(j: &Journey, ev: &Event) -> bool {
    !j.held
        && matches!(j.state, State::WaitingFor { .. })
        && sees(j, ev)
        && matches!(&j.sequence.steps[j.step].timing, Timing::WaitFor(w) if *w.event == *ev.kind)
}

/// Whether `seq`'s trigger condition holds for `ev` (absent: it does).
#[inline]
fn trigger_holds(seq: &Sequence, c: &Customer, ev: &Arc<Event>) -> bool {
    let Some(when) = &seq.trigger.when else {
        return true;
    };
    let order = ev.order_id().and_then(|o| c.order(o));
    let ctx = Ctx::new(&c.profile, Some(ev), order, None).into_value();
    eval(when, ctx, c)
}

/// The order's refund or cancellation arrived before the trigger (events racing each other):
/// the kind of that event, which ends new journey `ji` at once, as it would have had they
/// come in order.
#[inline]
fn ended_before<'c>(c: &'c Customer, ji: Ji, order_id: Option<&str>) -> Option<&'c str> {
    let seq = &c.journeys[ji].sequence;
    order_id
        .and_then(|o| c.order(o))
        .and_then(|o| o.ended_by(&seq.exit_on))
}
