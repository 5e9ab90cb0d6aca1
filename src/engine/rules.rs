//! Sending rules, applied last to every email a step would send.

use chrono::{DateTime, Utc};

use super::{Customer, Engine};
use crate::sequence::Sequence;
use crate::time::rfc3339;

pub enum Verdict {
    Send,
    /// Not sent, recorded with the reason; the journey carries on.
    Suppress(String),
    /// Held until the instant, then the step is due again.
    Defer(DateTime<Utc>, String),
}

impl Engine {
    /// Bounced addresses stop marketing email (and, by default, transactional email too);
    /// missing addresses stop every email; transactional email ignores the marketing rules
    /// (unsubscribes, quiet hours, frequency cap).
    pub(super) fn verdict(
        &self,
        c: &Customer,
        seq: &Sequence,
        step: usize,
        backfill: bool,
        now: DateTime<Utc>,
    ) -> Verdict {
        let p = &c.profile;
        let category = seq.step_category(step);
        if p.bounced && (self.policy.bounce_stops_transactional || !category.is_transactional()) {
            return Verdict::Suppress("address bounced".into());
        }
        if p.email.is_none() {
            return Verdict::Suppress("no email address".into());
        }
        if category.is_transactional() {
            return Verdict::Send;
        }
        if backfill {
            return Verdict::Suppress(super::BACKFILL.into());
        }
        if let Some(which) = p.unsubscribed_from(category.as_str()) {
            return Verdict::Suppress(format!("unsubscribed from {which}"));
        }
        // Quiet hours before the cap: an email held overnight is judged by the cap when it
        // would actually go out, not when it was first due.
        if let Some(q) = &self.policy.quiet_hours {
            let tz = self.timezone(c, seq);
            if let Some(end) = q.end_if_inside(now, tz) {
                return Verdict::Defer(
                    end,
                    format!("quiet hours {q} ({tz}): until {}", rfc3339(end)),
                );
            }
        }
        if !self.policy.min_gap.is_zero()
            && let Some(last) = p.last_marketing_at
            && now < last + self.policy.min_gap.0
        {
            return Verdict::Suppress(format!(
                "min_gap {}: last marketing email at {}",
                self.policy.min_gap,
                rfc3339(last)
            ));
        }
        Verdict::Send
    }
}
