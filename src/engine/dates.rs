//! Date triggers (SPEC §9): a journey that starts on a date of the customer's — a birthday,
//! an anniversary in `customer.attributes` — at a local time, every year, every month or once.
//!
//! Each customer keeps the next occurrence of each date-triggered sequence ([`DateDue`]); the
//! earliest is part of [`Engine::next_due`], so the store's due index wakes the customer then,
//! as for a step. Nothing scans all customers: an occurrence is computed when the date is
//! learnt or changed, and the next one when it fires. One already past when the date becomes
//! known is not sent; the next one is.

use chrono::{Datelike, Days, LocalResult, Months, NaiveDate, NaiveDateTime, TimeZone};
use serde::{Deserialize, Serialize};

use super::*;
use crate::sequence::{DateTrigger, ReorderAfter, ReorderTrigger, Repeat};

/// The next start of a date-triggered sequence for one customer, or of a reorder reminder
/// for one of their orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateDue {
    pub sequence: Arc<str>,
    /// `None` once nothing more is due (a `once` date that fired).
    pub at: Option<DateTime<Utc>>,
    /// The order a reorder reminder follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Arc<str>>,
    /// The local date of the occurrence that fired last: a date or timezone sent again
    /// after it (shops repeat the customer on every event) does not fire it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired: Option<NaiveDate>,
    /// The interval `after: auto` chose for a reorder reminder, for its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto: Option<AutoInterval>,
    /// How many times the interval a reorder reminder waits (`per_quantity`), when more
    /// than once: the quantity when the order came, whatever a repeat of the order says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<i32>,
}

/// The interval an `after: auto` reorder trigger chose when the order came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoInterval {
    /// The interval, in whole days (before the quantity).
    pub days: i64,
    /// The repeat buyers of the category then.
    pub buyers: u32,
    /// Too few of them: the sequence's `fallback`.
    pub fallback: bool,
}

impl AutoInterval {
    /// How the reason says where the interval came from.
    fn describe(&self, category: &str) -> String {
        match self.fallback {
            false => format!("after: auto, the median of {} repeat buyers", self.buyers),
            true => format!(
                "after: auto, the fallback: {} repeat buyers of {category}, fewer than {}",
                self.buyers,
                super::intervals::MIN_BUYERS
            ),
        }
    }
}

impl Engine {
    /// Schedules the customer's date-triggered sequences afresh when the event may have
    /// changed a date they read (or one has none scheduled yet): the first occurrence after
    /// `now`.
    pub(super) fn schedule_dates(&self, c: &mut Customer, ev: &Event, now: DateTime<Utc>) {
        let dated = self.catalog.dated();
        if dated.is_empty() {
            return;
        }
        let touched = ev.customer.as_ref().is_some_and(|p| {
            p.birthday.is_some() || p.attributes.is_some() || p.timezone.is_some()
        });
        for seq in dated {
            let Some(trigger) = &seq.trigger.date else {
                continue;
            };
            let scheduled = c.dates.iter().position(|d| d.sequence == seq.name);
            if !touched && scheduled.is_some() {
                continue;
            }
            let fired = scheduled.and_then(|i| c.dates[i].fired);
            let tz = self.timezone_of(c, seq);
            // At `now` too: an occurrence at the event's instant runs after it (SPEC: ties).
            let after = now - chrono::Duration::nanoseconds(1);
            let next = c
                .profile
                .date_of(&trigger.field)
                .and_then(|value| next_occurrence(trigger, value, tz, after, fired));
            set_due(c, seq, scheduled, next, fired);
        }
    }

    /// Starts the journeys whose date has come (before `before`, when given), each with
    /// the occurrence in its reason, and schedules the next occurrence.
    pub(super) fn fire_dates(
        &self,
        c: &mut Customer,
        now: DateTime<Utc>,
        before: Option<DateTime<Utc>>,
        out: &mut Vec<Decision>,
    ) {
        let limit = before.map_or(now, |b| b.min(now));
        while let Some(i) = c.dates.iter().position(|d| {
            d.at.is_some_and(|at| at < limit || (before.is_none() && at == limit))
        }) {
            let Some(due) = c.dates.remove(i) else {
                break;
            };
            let Some(at) = due.at else {
                continue;
            };
            let Some(seq) = self.catalog.get(&due.sequence).cloned() else {
                continue;
            };
            if let (Some(order), Some(r)) = (&due.order, &seq.trigger.reorder) {
                let reminder = Reminder {
                    order,
                    at,
                    auto: due.auto,
                    times: due.times,
                };
                self.start_reorder(c, &seq, r, reminder, now, out);
                continue;
            }
            let Some(trigger) = &seq.trigger.date else {
                continue;
            };
            let tz = self.timezone_of(c, &seq);
            let value = c.profile.date_of(&trigger.field).map(str::to_string);
            if let Some(value) = &value {
                self.start_dated(c, &seq, trigger, value, at, tz, now, out);
                let fired = Some(at.with_timezone(&tz).date_naive());
                let next = next_occurrence(trigger, value, tz, now.max(at), fired);
                set_due(c, &seq, None, next, fired);
            }
        }
    }

    /// The journey of `seq` for the occurrence at `at`, unless the customer is in it already
    /// or its `when` is false. Each occurrence is a journey of its own: `reenter` does not
    /// apply.
    #[allow(clippy::too_many_arguments)]
    fn start_dated(
        &self,
        c: &mut Customer,
        seq: &Arc<Sequence>,
        trigger: &DateTrigger,
        value: &str,
        at: DateTime<Utc>,
        tz: Tz,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        if c.journeys.any_of(&seq.name, None)
            || !self.passes(seq.trigger.when.as_ref(), c, None, None)
        {
            return;
        }
        let local = at.with_timezone(&tz).format("%Y-%m-%d %H:%M");
        let entry = Entry {
            sequence: seq.clone(),
            // The customer is in the id: the outbox keys its emails by journey, and two
            // customers share a birthday.
            id: JourneyId::derive(&[&seq.name, "date", &c.profile.id, &rfc3339(at)]),
            order_id: None,
            base: at,
            reason: format!("date {} {value}: {local} {}", trigger.field, tz.name()),
            backfill: false,
        };
        self.enter(c, entry, now, out);
    }

    /// An order with an item of `r.category`: the customer reordered, so the sequence's
    /// journeys and reminders for their earlier orders end (`exit`, `reordered`); this order's
    /// reminder is due `r.after` (times the quantity, `per_quantity`) after it — unless the
    /// order is `backfill` (older than `policy.max_event_age`), which enrols nobody. An order
    /// that arrives after a newer one of the category (placed later) changes nothing: the
    /// customer reordered since.
    pub(super) fn reorder(
        &self,
        c: &mut Customer,
        seq: &Arc<Sequence>,
        ev: &Arc<Event>,
        backfill: bool,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let (crate::event::EventData::OrderPlaced(placed), Some(r)) =
            (&ev.data, &seq.trigger.reorder)
        else {
            return;
        };
        let quantity = quantity_of(&placed.items, r);
        if quantity == 0 {
            return;
        }
        let order = placed.order_id.as_str();
        if has_newer(c, r, order, ev.time) {
            return;
        }
        self.reordered(c, seq, order, now, out);
        if self.may_enter(c, seq, Some(order)).is_err()
            || c.dates.iter().any(|d| d.sequence == seq.name)
        {
            return;
        }
        if backfill {
            return;
        }
        let (after, auto) = self.reorder_interval(r, now);
        let Some(at) = reminder_at(r, after, ev.time, quantity) else {
            return;
        };
        c.dates.push(DateDue {
            sequence: seq.name.clone(),
            at: Some(at),
            order: Some(order.into()),
            fired: None,
            auto,
            times: Some(times(r, quantity)).filter(|t| *t > 1),
        });
    }

    /// The customer ordered the category again (`order`): the sequence's journeys and
    /// reminders of their other orders end.
    fn reordered(
        &self,
        c: &mut Customer,
        seq: &Sequence,
        order: &str,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let earlier: Vec<JourneyId> = c
            .journeys
            .iter()
            .filter(|j| j.sequence.name == seq.name && j.order_id.as_deref() != Some(order))
            .map(|j| j.id)
            .collect();
        for id in earlier {
            if let Some(ji) = c.journeys.find(id) {
                self.end(c, ji, now, Action::Exit, "reordered".into(), false, out);
            }
        }
        c.dates
            .retain(|d| d.sequence != seq.name || d.order.as_deref() == Some(order));
    }

    /// How long after an order of `r.category` placed now its reminder waits (before the
    /// quantity): `after`, or with `after: auto` the store's median interval of the day
    /// (the `fallback` while it has too few repeat buyers), said how.
    fn reorder_interval(
        &self,
        r: &ReorderTrigger,
        now: DateTime<Utc>,
    ) -> (Period, Option<AutoInterval>) {
        let fallback = match r.after {
            ReorderAfter::Fixed(p) => return (p, None),
            ReorderAfter::Auto { fallback } => fallback,
        };
        let figure = self.intervals.at(&r.category, now);
        let buyers = figure.map_or(0, |i| i.buyers);
        let (after, fallback) = match figure {
            Some(i) if i.buyers >= super::intervals::MIN_BUYERS => (Period(i.median), false),
            _ => (fallback, true),
        };
        let auto = AutoInterval {
            days: after.0.num_days(),
            buyers,
            fallback,
        };
        (after, Some(auto))
    }

    /// The reorder reminder of an order, due now: its journey, with the interval in the reason.
    fn start_reorder(
        &self,
        c: &mut Customer,
        seq: &Arc<Sequence>,
        r: &ReorderTrigger,
        reminder: Reminder<'_>,
        now: DateTime<Utc>,
        out: &mut Vec<Decision>,
    ) {
        let Reminder {
            order,
            at,
            auto,
            times,
        } = reminder;
        if self.may_enter(c, seq, Some(order)).is_err() {
            return;
        }
        let times = times.unwrap_or(1);
        let after = match (auto, r.after) {
            (Some(a), _) => Period(chrono::Duration::days(a.days)),
            (None, ReorderAfter::Fixed(p)) => p,
            (None, ReorderAfter::Auto { fallback }) => fallback,
        };
        let waited = Period(after.0 * times);
        let mut how: Vec<String> = Vec::new();
        if times > 1 {
            how.push(format!("{after} × {times}"));
        }
        if let Some(a) = auto {
            how.push(a.describe(&r.category));
        }
        let times = match how.is_empty() {
            true => String::new(),
            false => format!(" ({})", how.join("; ")),
        };
        let entry = Entry {
            sequence: seq.clone(),
            // Order ids are the shop's: two customers' may be equal.
            id: JourneyId::derive(&[&seq.name, "reorder", &c.profile.id, order]),
            order_id: Some(order),
            base: at,
            reason: format!(
                "reorder {}: {waited} after order {order}{times}",
                r.category
            ),
            backfill: false,
        };
        self.enter(c, entry, now, out);
    }

    /// The timezone a date is read in: the customer's, the sequence's, the policy's.
    fn timezone_of(&self, c: &Customer, seq: &Sequence) -> Tz {
        c.profile
            .timezone
            .or(seq.timezone)
            .unwrap_or(self.policy.timezone)
    }
}

/// Replaces (at `scheduled`) or adds the customer's next occurrence of `seq`, remembering
/// the one that fired last; with neither, the entry goes.
fn set_due(
    c: &mut Customer,
    seq: &Sequence,
    scheduled: Option<usize>,
    next: Option<DateTime<Utc>>,
    fired: Option<NaiveDate>,
) {
    let scheduled = scheduled.or_else(|| c.dates.iter().position(|d| d.sequence == seq.name));
    let keep = next.is_some() || fired.is_some();
    match (scheduled, keep) {
        (Some(i), true) => {
            c.dates[i].at = next;
            c.dates[i].fired = fired;
        }
        (Some(i), false) => {
            c.dates.remove(i);
        }
        (None, true) => c.dates.push(DateDue {
            sequence: seq.name.clone(),
            at: next,
            order: None,
            fired,
            auto: None,
            times: None,
        }),
        (None, false) => {}
    }
}

/// The next occurrence after `after` that is not the one that already `fired` (by its
/// local date); for `once`, none after it fired.
fn next_occurrence(
    trigger: &DateTrigger,
    value: &str,
    tz: Tz,
    after: DateTime<Utc>,
    fired: Option<NaiveDate>,
) -> Option<DateTime<Utc>> {
    if trigger.repeat == Repeat::Once && fired.is_some() {
        return None;
    }
    let next = next_after(trigger, value, tz, after)?;
    match fired == Some(next.with_timezone(&tz).date_naive()) {
        true => next_after(trigger, value, tz, next),
        false => Some(next),
    }
}

/// How many of the items are of the reorder's category.
fn quantity_of(items: &[crate::event::Item], r: &ReorderTrigger) -> u64 {
    items
        .iter()
        .filter(|i| *i.category == *r.category)
        .map(|i| u64::from(i.quantity))
        .sum()
}

/// How many times `after` a reminder waits: the quantity with `per_quantity`, 1 to 100.
fn times(r: &ReorderTrigger, quantity: u64) -> i32 {
    match r.per_quantity {
        true => quantity.clamp(1, 100) as i32,
        false => 1,
    }
}

/// When the reminder for an order placed at `placed` is due: `after`, times the quantity when
/// `per_quantity` (at most 100 times).
fn reminder_at(
    r: &ReorderTrigger,
    after: Period,
    placed: DateTime<Utc>,
    quantity: u64,
) -> Option<DateTime<Utc>> {
    placed.checked_add_signed(after.0.checked_mul(times(r, quantity))?)
}

/// A reorder reminder falling due: its order, when, the interval `after: auto` chose and how
/// many times it waited.
struct Reminder<'a> {
    order: &'a str,
    at: DateTime<Utc>,
    auto: Option<AutoInterval>,
    times: Option<i32>,
}

/// Whether the customer has an order of `r.category` other than `order`, placed after `at`.
fn has_newer(c: &Customer, r: &ReorderTrigger, order: &str, at: DateTime<Utc>) -> bool {
    c.orders.iter().any(|o| {
        *o.id != *order && o.placed_at.is_some_and(|p| p > at) && quantity_of(&o.items, r) > 0
    })
}

/// The date in `value`: `YYYY-MM-DD`, or the date an RFC 3339 time has where it was written.
pub fn parse_date(value: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(value)
                .ok()
                .map(|t| t.date_naive())
        })
}

/// The first occurrence of `trigger` for the date `value` strictly after `after`, in `tz`.
pub fn next_after(
    trigger: &DateTrigger,
    value: &str,
    tz: Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let date = parse_date(value)?;
    // Around the anniversary that lands after `after`: the date the offset counts from.
    let local = shift(after.with_timezone(&tz).date_naive(), -trigger.offset_days)?;
    let candidates: Box<dyn Iterator<Item = NaiveDate>> = match trigger.repeat {
        Repeat::Once => Box::new(std::iter::once(date)),
        // From the year before (an offset may move an occurrence across New Year).
        Repeat::Yearly => {
            Box::new((local.year() - 1..=local.year() + 2).filter_map(move |y| on_year(date, y)))
        }
        Repeat::Monthly => {
            let start = local.with_day(1)?.checked_sub_months(Months::new(2))?;
            Box::new((0..16).filter_map(move |m| {
                let month = start.checked_add_months(Months::new(m))?;
                on_month(date, month)
            }))
        }
    };
    candidates
        .filter_map(|d| shift(d, trigger.offset_days))
        .filter_map(|d| instant(tz, d.and_time(trigger.at)))
        .find(|t| *t > after)
}

/// The anniversary of `date` in year `y`; 29 February falls on 28 February in other years.
fn on_year(date: NaiveDate, y: i32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(y, date.month(), date.day())
        .or_else(|| NaiveDate::from_ymd_opt(y, date.month(), date.day() - 1))
}

/// `date`'s day of the month in the month of `first` (its first day), or that month's last.
fn on_month(date: NaiveDate, first: NaiveDate) -> Option<NaiveDate> {
    (0..4).find_map(|back| NaiveDate::from_ymd_opt(first.year(), first.month(), date.day() - back))
}

fn shift(d: NaiveDate, days: i32) -> Option<NaiveDate> {
    match days >= 0 {
        true => d.checked_add_days(Days::new(days as u64)),
        false => d.checked_sub_days(Days::new(days.unsigned_abs() as u64)),
    }
}

/// The instant of a local time; in a gap (clocks forward) the first valid minute after it.
fn instant(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    (0..=180).find_map(|minutes| {
        match tz.from_local_datetime(&(local + chrono::Duration::minutes(minutes))) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => None,
        }
    })
}
