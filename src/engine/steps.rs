//! Running a journey's steps: a step falling due, its email, its wait, its goal, and the end
//! of the journey, each recorded as a decision.

use super::experiment;
use super::windows::next_allowed;
use super::*;

impl Engine {
    /// Starts waiting for the current step, counting from `base`.
    pub(super) fn begin_step(&self, c: &mut Customer, ji: Ji, base: DateTime<Utc>) {
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
    pub(super) fn due_step(
        &self,
        c: &mut Customer,
        ji: Ji,
        now: DateTime<Utc>,
        cause: Cause,
        ev: Option<&Arc<Event>>,
        out: &mut Vec<Decision>,
    ) {
        let seq = c.journeys[ji].sequence.clone();
        if self.held_back(c, ji, &seq, ev, now, out) || !self.window_open(c, ji, &seq, now, out) {
            return;
        }
        let step = c.journeys[ji].step;
        // A split step runs the customer's variant: its action, or the step's as written.
        let variant = experiment::variant(&seq, step, &c.profile.id);
        let action = variant
            .and_then(|v| v.action.as_ref())
            .or(seq.steps[step].action.as_ref());
        match action {
            None => {}
            Some(sequence::Action::Exit) => {
                return self.end(c, ji, now, Action::Exit, "exit step".into(), true, out);
            }
            Some(sequence::Action::Start { sequence }) => self.start(c, ji, sequence, now, out),
            Some(sequence::Action::Email { template }) => {
                let email = ToSend {
                    template,
                    variant: variant.map(|v| &*v.id),
                    endpoint: None,
                };
                return self.email_step(c, ji, email, cause, now, out);
            }
            Some(sequence::Action::Webhook { endpoint, body, .. }) => {
                let post = ToSend {
                    template: body,
                    variant: variant.map(|v| &*v.id),
                    endpoint: Some(endpoint),
                };
                return self.email_step(c, ji, post, cause, now, out);
            }
            Some(sequence::Action::Branch(arms)) => return self.branch(c, ji, arms, ev, now, out),
        }
        self.next_step(c, ji, now, out)
    }

    /// A `branch` step: the first arm that holds, `branch` with its reason (`when …` or
    /// `otherwise`), and the journey goes to its step; with none, on to the next step.
    fn branch(
        &self,
        c: &mut Customer,
        ji: Ji,
        arms: &[sequence::Branch],
        ev: Option<&Arc<Event>>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let taken = arms
            .iter()
            .find(|arm| arm.when.is_none() || self.check(arm.when.as_ref(), c, ev, Some(ji)));
        let Some(arm) = taken else {
            self.push(
                c,
                ji,
                now,
                Action::Skip,
                "branch: no arm matched".into(),
                out,
            );
            return self.next_step(c, ji, now, out);
        };
        let reason = match &arm.when {
            Some(when) => format!("when {when}"),
            None => "otherwise".into(),
        };
        self.push(c, ji, now, Action::Branch, reason, out);
        c.journeys.update(ji, |j| j.step = arm.goto);
        self.begin_step(c, ji, now);
    }

    /// `skip_when` and `pause_when`: true, recorded, when either holds the step back. A
    /// skipped step moves the journey on; a paused one resumes when `pause_when` turns false.
    fn held_back(
        &self,
        c: &mut Customer,
        ji: Ji,
        seq: &Sequence,
        ev: Option<&Arc<Event>>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) -> bool {
        let step = &seq.steps[c.journeys[ji].step];
        if let Some(skip) = &step.skip_when
            && self.check(Some(skip), c, ev, Some(ji))
        {
            self.push(c, ji, now, Action::Skip, format!("skip_when: {skip}"), out);
            self.next_step(c, ji, now, out);
            return true;
        }
        if let Some(pause) = &seq.pause_when
            && self.check(Some(pause), c, ev, Some(ji))
        {
            let reason = format!("pause_when: {pause}");
            self.push(c, ji, now, Action::Pause, reason, out);
            c.journeys.update(ji, |j| j.state = State::Paused);
            return true;
        }
        false
    }

    /// The step's send window: true when it allows `now` (or the step has none). Otherwise the
    /// step is deferred to the next slot, or skipped when the window never opens, and recorded.
    fn window_open(
        &self,
        c: &mut Customer,
        ji: Ji,
        seq: &Sequence,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) -> bool {
        let si = c.journeys[ji].step;
        let Some(window) = &seq.steps[si].send_window else {
            return true;
        };
        let tz = self.timezone(&c.profile, seq);
        let quiet = self.quiet_hours_for(seq, si);
        match next_allowed(window, quiet.as_ref(), tz, now) {
            Some(slot) if slot > now => {
                let reason = format!(
                    "send_window \"{}\" ({tz}): until {}",
                    window.source,
                    rfc3339(slot)
                );
                self.push(c, ji, now, Action::Defer, reason, out);
                due_again(c, ji, slot, Cause::Window);
                false
            }
            Some(_) => true,
            None => {
                let reason = never_opens(window, quiet);
                self.push(c, ji, now, Action::Skip, reason, out);
                self.next_step(c, ji, now, out);
                false
            }
        }
    }

    /// The quiet hours a step's send window must also miss: those of the policy, for
    /// marketing email only.
    fn quiet_hours_for(&self, seq: &Sequence, si: usize) -> Option<QuietHours> {
        // Marketing email must also miss quiet hours: look for an instant both allow, or
        // the two would defer each other forever.
        let marketing = matches!(
            seq.steps[si].action,
            Some(sequence::Action::Email { .. } | sequence::Action::Webhook { .. })
        ) && !seq.step_category(si).is_transactional();
        self.policy.quiet_hours.filter(|_| marketing)
    }

    /// An email (or webhook) step, by the sending rules: sent or suppressed, and the journey
    /// moves on; or deferred, and the step falls due again when the rules allow.
    fn email_step(
        &self,
        c: &mut Customer,
        ji: Ji,
        email: ToSend<'_>,
        cause: Cause,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let j = &c.journeys[ji];
        let channel = email.channel();
        match self.verdict(c, &j.sequence, j.step, j.backfill, channel, now) {
            Verdict::Send => match self.held_out(c, ji) {
                // Nothing is sent; the journey goes on as everyone else's (SPEC §8).
                Some(reason) => self.push(c, ji, now, Action::Holdout, reason, out),
                None => self.email(c, ji, email, cause, now, out),
            },
            Verdict::Suppress(reason) => self.push(c, ji, now, Action::Suppress, reason, out),
            Verdict::Defer(until, reason) => {
                self.push(c, ji, now, Action::Defer, reason, out);
                return due_again(c, ji, until, Cause::QuietHoursOver);
            }
        }
        self.next_step(c, ji, now, out)
    }

    /// Why the journey's customer gets none of this step's email, when they are in the global
    /// holdout group or in its sequence's: only marketing emails are held out, never
    /// transactional ones.
    fn held_out(&self, c: &Customer, ji: Ji) -> Option<String> {
        let j = &c.journeys[ji];
        if j.sequence.step_category(j.step).is_transactional() {
            return None;
        }
        let global = self.policy.global_holdout.as_ref();
        global
            .and_then(|g| g.holds(&c.profile.id))
            .or_else(|| experiment::held_out(&j.sequence, &c.profile.id))
    }

    /// Records the email the step sends, with its subject as rendered now; a template error
    /// suppresses it instead. A webhook post is recorded as `webhook`, its body rendered when
    /// it is sent.
    pub(super) fn email(
        &self,
        c: &mut Customer,
        ji: Ji,
        email: ToSend<'_>,
        cause: Cause,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let template = email.template;
        let coupon = self.coupon_code(c, ji);
        let subject = match email.endpoint {
            Some(_) => None,
            None => match self.subject(c, ji, template, coupon.as_deref()) {
                Ok(s) => Some(s),
                Err(reason) => return self.push(c, ji, now, Action::Suppress, reason, out),
            },
        };
        let j = &c.journeys[ji];
        let seq = j.sequence.clone();
        let si = j.step;
        let category = seq.step_category(si).clone();
        if !category.is_transactional() {
            Arc::make_mut(&mut c.profile).last_marketing_at = Some(now);
        }
        let mut reason = cause.describe(&seq.steps[si]);
        if let Some(v) = email.variant {
            reason.push_str("; variant ");
            reason.push_str(v);
            self.variant_sent(c, &seq, &seq.steps[si].id, v);
        }
        let action = match email.endpoint {
            Some(endpoint) => {
                reason.push_str("; endpoint ");
                reason.push_str(endpoint);
                Action::Webhook
            }
            None => Action::Email,
        };
        if let Some(code) = coupon {
            reason.push_str("; coupon ");
            reason.push_str(&code);
            self.coupon_given(c, ji, code);
        }
        let mut d = self.decision(c, ji, now, action, reason);
        d.subject = subject;
        d.email = Some(EmailIntent {
            template: template.clone(),
            endpoint: email.endpoint.cloned(),
            transactional: category.is_transactional(),
            category: category.0,
            order_id: c.journeys[ji].order_id.clone(),
        });
        out.push(d);
        self.arm_goal(c, ji, now);
    }

    /// The subject of the journey's email, rendered by the templates of its version, or the
    /// suppression reason when the template fails (logged).
    fn subject(
        &self,
        c: &Customer,
        ji: Ji,
        template: &str,
        coupon: Option<&str>,
    ) -> Result<String, String> {
        let j = &c.journeys[ji];
        let order = j.order_id.as_deref().and_then(|o| c.order(o));
        // Templates see no `event`: the email is rendered again when it is sent, where the event
        // is long gone, and the subject printed here must be the one sent.
        let mut ctx = Ctx::new(&c.profile, None, order, Some(j));
        ctx.coupon = Ctx::coupon(coupon);
        let ctx = ctx.into_value();
        let locale = c.profile.locale.as_deref();
        // The templates of the journey's version: an edit or a rename since it started is a
        // new version, for new journeys. The context, and its share of the profile, is gone
        // once this returns, so the caller's update of the profile does not copy it.
        let seq = &j.sequence;
        seq.templates
            .render_subject(template, locale, &ctx)
            .map_err(|e| {
                tracing::warn!(customer_id = %crate::redact::text(&c.profile.id), sequence = %seq.name, error = %e, "template error");
                format!("template error: {e}")
            })
    }

    /// The code of the step's `coupon`, derived from its idempotency key (`journey:step`).
    fn coupon_code(&self, c: &Customer, ji: Ji) -> Option<String> {
        let j = &c.journeys[ji];
        let step = &j.sequence.steps[j.step];
        // Nearly every email has none: no key is formatted for it.
        step.coupon.as_ref()?;
        let key = format!("{}:{}", j.id, step.id);
        self.coupon_for(step, &c.profile.id, &key)
    }

    /// Keeps the code a step gave, for its redemption (the newest [`coupon::KEPT`]).
    fn coupon_given(&self, c: &mut Customer, ji: Ji, code: String) {
        let j = &c.journeys[ji];
        let given = super::coupon::Given {
            code: code.into(),
            journey: j.id,
            sequence: j.sequence.name.clone(),
            version: j.sequence.version.clone(),
            step: j.sequence.steps[j.step].id.clone(),
            redeemed: false,
        };
        if c.coupons.len() >= super::coupon::KEPT {
            c.coupons.remove(0);
        }
        c.coupons.push(given);
    }

    /// A `start` step: the journey hands over to a new one of the target sequence, or records
    /// why it does not.
    pub(super) fn start(
        &self,
        c: &mut Customer,
        ji: Ji,
        target: &str,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let order_id = c.journeys[ji].order_id.clone();
        let entry = match self.hand_over(c, ji, target, order_id.as_deref(), now) {
            Ok(entry) => entry,
            Err(reason) => return self.push(c, ji, now, Action::Start, reason, out),
        };
        self.push(c, ji, now, Action::Start, format!("start {target}"), out);
        self.arm_goal(c, ji, now);
        self.enter(c, entry, now, out);
    }

    /// The journey a `start` step begins, or why it may not: the target is not loaded,
    /// backfill reaches marketing neither by trigger nor through a transactional hand-over,
    /// or the target's entry rules refuse it.
    fn hand_over<'a>(
        &self,
        c: &Customer,
        ji: Ji,
        target: &str,
        order_id: Option<&'a str>,
        now: DateTime<Utc>,
    ) -> Result<Entry<'a>, String> {
        let parent = &c.journeys[ji];
        let Some(seq) = self.catalog.get(target).cloned() else {
            return Err(format!("{target} is not loaded"));
        };
        let order_id = match seq.journey {
            JourneyKind::PerOrder => order_id,
            JourneyKind::PerCustomer => None,
        };
        if parent.backfill && !seq.category.is_transactional() {
            return Err(format!("not started: {BACKFILL}"));
        }
        self.may_enter(c, &seq, order_id)
            .map_err(|why| format!("not started: {why}"))?;
        let step_id = &parent.sequence.steps[parent.step].id;
        Ok(Entry {
            // Tagged: an event's journey is (sequence, source, id), and a producer could send
            // the parent's id as a source.
            id: JourneyId::derive(&[&seq.name, "start", &parent.id.to_string(), step_id]),
            reason: format!("started by {}/{}", parent.sequence.name, step_id),
            sequence: seq,
            order_id,
            base: now,
            backfill: parent.backfill,
        })
    }

    pub(super) fn arm_goal(&self, c: &mut Customer, ji: Ji, now: DateTime<Utc>) {
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

    pub(super) fn timed_out(
        &self,
        c: &mut Customer,
        ji: Ji,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
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
    pub(super) fn next_step(
        &self,
        c: &mut Customer,
        ji: Ji,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
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
    pub(super) fn end(
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
        // Help is what the customer was sent: a held-out customer's completion is not.
        let helped = action == Action::Complete
            && *c.journeys[ji].sequence.category.0 == *"education"
            && self.held_out(c, ji).is_none();
        let Some(j) = c.journeys.remove(ji) else {
            return;
        };
        if helped {
            c.helped(now);
        }
        if finished
            && j.sequence.journey == JourneyKind::PerCustomer
            && !c.finished.contains(&j.sequence.name)
        {
            c.finished.push(j.sequence.name.clone());
        }
    }

    pub(super) fn decision(
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

    pub(super) fn push(
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
}

/// The email a step sends: its template, and the variant of a split step that chose it; or
/// the webhook it posts: its body and endpoint.
#[derive(Clone, Copy)]
pub(super) struct ToSend<'a> {
    pub(super) template: &'a Arc<str>,
    pub(super) variant: Option<&'a str>,
    pub(super) endpoint: Option<&'a Arc<str>>,
}

impl ToSend<'_> {
    fn channel(&self) -> Channel {
        match self.endpoint {
            Some(_) => Channel::Webhook,
            None => Channel::Email,
        }
    }
}

/// The journey stays on its step, due again at `at`.
fn due_again(c: &mut Customer, ji: Ji, at: DateTime<Utc>, cause: Cause) {
    c.journeys
        .update(ji, |j| j.state = State::Due { at, cause });
}

/// Why a step is skipped whose send window has no slot (outside the quiet hours, if any).
fn never_opens(window: &CronWindow, quiet: Option<QuietHours>) -> String {
    match quiet {
        Some(q) => format!(
            "send_window \"{}\" never opens outside quiet hours {q}",
            window.source
        ),
        None => format!("send_window \"{}\" has no future slot", window.source),
    }
}
