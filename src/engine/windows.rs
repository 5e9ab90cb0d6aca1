//! When a step may send: its `send_window` and quiet hours, in the customer's timezone.

use super::*;

impl Engine {
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
    pub(super) fn timezone(&self, p: &Profile, seq: &Sequence) -> Tz {
        p.timezone.or(seq.timezone).unwrap_or(self.policy.timezone)
    }
}

/// The first instant at or after `now` in the window's slots and outside quiet hours; `None`
/// if the window has no such slot within a year's worth of tries.
pub(super) fn next_allowed(
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
