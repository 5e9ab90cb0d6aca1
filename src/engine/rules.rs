//! Sending rules, applied last to every email a step would send.

use chrono::{DateTime, Utc};

use super::{Channel, Customer, Engine, Profile};
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
    /// (unsubscribes, quiet hours, frequency cap). A webhook post is held to the marketing
    /// rules as email is, and needs no address.
    pub(super) fn verdict(
        &self,
        c: &Customer,
        seq: &Sequence,
        step: usize,
        backfill: bool,
        channel: Channel,
        now: DateTime<Utc>,
    ) -> Verdict {
        let p = &c.profile;
        let category = seq.step_category(step);
        let transactional = category.is_transactional();
        if channel == Channel::Email {
            if let Some(reason) = self.bounced(p, transactional) {
                return Verdict::Suppress(reason);
            }
            if p.email.is_none() {
                return Verdict::Suppress("no email address".into());
            }
        }
        if transactional {
            return Verdict::Send;
        }
        if backfill {
            return Verdict::Suppress(super::BACKFILL.into());
        }
        if let Some(reason) = unsubscribed(p, category.as_str()) {
            return Verdict::Suppress(reason);
        }
        // Quiet hours before the cap: an email held overnight is judged by the cap when it
        // would actually go out, not when it was first due.
        if let Some(q) = &self.policy.quiet_hours {
            let tz = self.timezone(p, seq);
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

    /// The rules that can change between queuing an email and sending it (a bounce, an
    /// unsubscribe since), as the outbox applies them at send time: why not to send, if not.
    pub fn still_sendable(
        &self,
        p: &Profile,
        category: &str,
        transactional: bool,
        channel: Channel,
    ) -> Result<(), String> {
        let bounced = match channel {
            Channel::Email => self.bounced(p, transactional),
            Channel::Webhook => None,
        };
        let reason = bounced.or_else(|| match transactional {
            true => None,
            false => unsubscribed(p, category),
        });
        reason.map_or(Ok(()), Err)
    }

    /// A bounced address stops marketing email, and transactional email too by default.
    fn bounced(&self, p: &Profile, transactional: bool) -> Option<String> {
        (p.bounced && (self.policy.bounce_stops_transactional || !transactional))
            .then(|| "address bounced".into())
    }

    /// A refusal of `address` for good (a 5xx) marks the profile bounced, if `address` is
    /// still its address (a new one has not bounced); whether it changed anything. `run`
    /// applies it to the stored profile, `simulate` to the customer in memory.
    pub fn bounce(p: &mut Profile, address: &str) -> bool {
        let same = p
            .email
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case(address));
        if !same || p.bounced {
            return false;
        }
        p.bounced = true;
        true
    }
}

/// Unsubscribed from the category or from everything.
fn unsubscribed(p: &Profile, category: &str) -> Option<String> {
    p.unsubscribed_from(category)
        .map(|which| format!("unsubscribed from {which}"))
}

#[cfg(test)]
mod tests {
    use super::{Channel, Engine, Profile};

    fn profile(email: &str) -> Profile {
        Profile {
            email: Some(email.into()),
            ..Profile::default()
        }
    }

    #[test]
    fn a_bounce_marks_the_address_it_was_for_and_only_that() {
        let mut p = profile("Ann@Example.com");
        assert!(!Engine::bounce(&mut p, "other@example.com"));
        assert!(!p.bounced);
        assert!(Engine::bounce(&mut p, "ann@example.com"));
        assert!(p.bounced);
        // Already bounced: nothing changes.
        assert!(!Engine::bounce(&mut p, "ann@example.com"));
    }

    /// What the outbox checks at send time is what the engine checks when it decides.
    #[test]
    fn send_time_rules_are_the_engines() {
        let catalog = crate::engine::journeys::tests::catalog();
        let mut engine = Engine::new(catalog, crate::engine::Policy::default());
        let mut p = profile("ann@example.com");
        assert_eq!(
            engine.still_sendable(&p, "review", false, Channel::Email),
            Ok(())
        );
        p.unsubscribed.insert_sorted("review");
        assert_eq!(
            engine.still_sendable(&p, "review", false, Channel::Email),
            Err("unsubscribed from review".into())
        );
        // Transactional email ignores unsubscribes, not bounces (by default).
        assert_eq!(
            engine.still_sendable(&p, "transactional", true, Channel::Email),
            Ok(())
        );
        p.bounced = true;
        assert_eq!(
            engine.still_sendable(&p, "transactional", true, Channel::Email),
            Err("address bounced".into())
        );
        engine.policy.bounce_stops_transactional = false;
        assert_eq!(
            engine.still_sendable(&p, "transactional", true, Channel::Email),
            Ok(())
        );
        assert_eq!(
            engine.still_sendable(&p, "review", false, Channel::Email),
            Err("address bounced".into())
        );
        // A webhook needs no address: a bounce stops none, an unsubscribe does.
        assert_eq!(
            engine.still_sendable(&p, "review", false, Channel::Webhook),
            Err("unsubscribed from review".into())
        );
        assert_eq!(
            engine.still_sendable(&p, "education", false, Channel::Webhook),
            Ok(())
        );
    }
}
