//! The store's reorder intervals (SPEC §9 `after: auto`): for a category, the median time
//! between consecutive orders of it (to the hour) among the customers who bought it at least
//! twice, computed at the start of each day (UTC) from the orders placed before it.
//!
//! `simulate` computes them as it reads the events ([`Observed::order`]), `run` from the
//! store at each midnight ([`Observed::customer`]): the same orders give the same figures.
//! The engine reads the figure of the day an order is placed ([`Intervals::at`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};

use super::Order;

/// Fewer repeat buyers than this and the sequence's `fallback` is used.
pub const MIN_BUYERS: u32 = 30;

/// The median interval of a category, and how many repeat buyers it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// Rounded to whole days, at least one.
    pub median: Duration,
    pub buyers: u32,
}

/// The figures by category, each as computed at the start of each day: a lookup at time `t`
/// reads the figure of `t`'s day. Shared by the engines of a replay or a service; written by
/// one reader.
#[derive(Debug, Default)]
pub struct Intervals {
    by_category: RwLock<HashMap<Arc<str>, Days>>,
}

/// A category's figures, each from the start of its day, in day order.
type Days = Vec<(DateTime<Utc>, Interval)>;

/// Days of figures kept per category (a service adds one a day).
const KEPT_DAYS: usize = 800;

impl Intervals {
    /// The figures from `day` on (the start of a UTC day).
    pub fn record(&self, day: DateTime<Utc>, figures: &[(Arc<str>, Interval)]) {
        let Ok(mut by) = self.by_category.write() else {
            return;
        };
        for (category, interval) in figures {
            let days = by.entry(category.clone()).or_default();
            if days.last().is_some_and(|(d, _)| *d >= day) {
                continue;
            }
            days.push((day, *interval));
            if days.len() > KEPT_DAYS {
                days.remove(0);
            }
        }
    }

    /// The figure for `category` at `t`: the one computed at the start of `t`'s day (or the
    /// latest before it).
    pub fn at(&self, category: &str, t: DateTime<Utc>) -> Option<Interval> {
        let by = self.by_category.read().ok()?;
        let days = by.get(category)?;
        let i = days.partition_point(|(d, _)| *d <= t);
        i.checked_sub(1).map(|i| days[i].1)
    }

    /// The latest figure of every category, in name order (for `plan` and `/metrics`).
    pub fn latest(&self) -> Vec<(Arc<str>, Interval)> {
        let Ok(by) = self.by_category.read() else {
            return Vec::new();
        };
        let mut out: Vec<(Arc<str>, Interval)> = by
            .iter()
            .filter_map(|(c, days)| Some((c.clone(), days.last()?.1)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The orders seen so far, for the categories asked about.
#[derive(Debug, Default)]
pub struct Observed {
    categories: HashMap<Arc<str>, Category>,
}

#[derive(Debug, Default)]
struct Category {
    /// Each customer's orders of the category, in the order they were placed.
    orders: HashMap<Arc<str>, Placed>,
    /// Every interval between consecutive orders, in whole hours, with how many have it.
    intervals: BTreeMap<i64, u64>,
    count: u64,
    /// Customers with at least two orders of the category.
    buyers: u32,
}

impl Observed {
    /// Watches `categories` (those of the `after: auto` reorder triggers).
    pub fn new<'a>(categories: impl IntoIterator<Item = &'a Arc<str>>) -> Observed {
        Observed {
            categories: categories
                .into_iter()
                .map(|c| (c.clone(), Category::default()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.categories.is_empty()
    }

    /// One order: each watched category among `categories` has it between the customer's
    /// orders placed before and after it, as if the orders had come in the order they were
    /// placed (a late one splits an interval in two), so reading the events and reading the
    /// store give the same figures. An order seen again (the same id) adds nothing.
    pub fn order<'a>(
        &mut self,
        customer: &Arc<str>,
        order: &Arc<str>,
        placed: DateTime<Utc>,
        categories: impl IntoIterator<Item = &'a str>,
    ) {
        for name in categories {
            if let Some(cat) = self.categories.get_mut(name) {
                cat.add(customer, order, placed);
            }
        }
    }

    /// A customer's stored orders, placed before `before`, in the order they were placed.
    pub fn customer(&mut self, customer: &Arc<str>, orders: &[Order], before: DateTime<Utc>) {
        let mut placed: Vec<(DateTime<Utc>, &Order)> = orders
            .iter()
            .filter_map(|o| Some((o.placed_at?, o)))
            .filter(|(at, _)| *at < before)
            .collect();
        placed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        for (at, o) in placed {
            let categories = o
                .items
                .iter()
                .filter(|i| i.quantity > 0)
                .map(|i| &*i.category);
            self.order(customer, &o.id, at, categories);
        }
    }

    /// The median interval of each watched category that has any repeat buyer.
    pub fn figures(&self) -> Vec<(Arc<str>, Interval)> {
        let mut out: Vec<(Arc<str>, Interval)> = self
            .categories
            .iter()
            .filter_map(|(name, c)| Some((name.clone(), c.figure()?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// A customer's orders of a category: when each was placed, and its id, in that order.
type Placed = Vec<(DateTime<Utc>, Arc<str>)>;

impl Category {
    fn add(&mut self, customer: &Arc<str>, order: &Arc<str>, placed: DateTime<Utc>) {
        let orders = self.orders.entry(customer.clone()).or_default();
        if orders.iter().any(|(_, id)| id == order) {
            return;
        }
        let i = orders.partition_point(|(at, id)| (*at, &**id) <= (placed, &**order));
        let before = i.checked_sub(1).map(|b| orders[b].0);
        let after = orders.get(i).map(|o| o.0);
        orders.insert(i, (placed, order.clone()));
        if orders.len() == 2 {
            self.buyers = self.buyers.saturating_add(1);
        }
        if let (Some(b), Some(a)) = (before, after) {
            self.remove(a - b);
        }
        if let Some(b) = before {
            self.insert(placed - b);
        }
        if let Some(a) = after {
            self.insert(a - placed);
        }
    }

    fn insert(&mut self, gap: Duration) {
        *self.intervals.entry(gap.num_hours()).or_default() += 1;
        self.count += 1;
    }

    fn remove(&mut self, gap: Duration) {
        let hours = gap.num_hours();
        if let Some(n) = self.intervals.get_mut(&hours) {
            *n -= 1;
            self.count -= 1;
            if *n == 0 {
                self.intervals.remove(&hours);
            }
        }
    }

    /// The median of the intervals (of the two middle ones, their mean), rounded to days.
    fn figure(&self) -> Option<Interval> {
        if self.count == 0 {
            return None;
        }
        let (lower, upper) = ((self.count - 1) / 2, self.count / 2);
        let (mut lo, mut hi, mut seen) = (None, None, 0u64);
        for (&hours, &n) in &self.intervals {
            if lo.is_none() && seen + n > lower {
                lo = Some(hours);
            }
            if seen + n > upper {
                hi = Some(hours);
                break;
            }
            seen += n;
        }
        let median = (lo? + hi?) as f64 / 2.0;
        let days = (median / 24.0).round().max(1.0) as i64;
        Some(Interval {
            median: Duration::days(days),
            buyers: self.buyers,
        })
    }
}

/// The categories of the catalog's `after: auto` reorder triggers.
pub fn watched(catalog: &crate::sequence::Catalog) -> Vec<Arc<str>> {
    let mut out: Vec<Arc<str>> = catalog
        .sequences()
        .iter()
        .filter_map(|s| s.trigger.reorder.as_ref())
        .filter(|r| matches!(r.after, crate::sequence::ReorderAfter::Auto { .. }))
        .map(|r| r.category.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The start of `t`'s day, UTC.
pub fn day_of(t: DateTime<Utc>) -> DateTime<Utc> {
    t.date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(t, |d| d.and_utc())
}

/// An engine's intervals kept up as a replay reads its events in order: at the first event
/// of each day, that day's figures from the orders before it; then the event's order.
#[derive(Debug)]
pub struct Watch {
    observed: Observed,
    intervals: Arc<Intervals>,
    day: Option<DateTime<Utc>>,
}

impl Watch {
    /// For `engine`'s catalog; `None` when no sequence asks for `after: auto`.
    pub fn of(engine: &super::Engine) -> Option<Watch> {
        let categories = watched(&engine.catalog);
        let observed = Observed::new(&categories);
        (!observed.is_empty()).then(|| Watch {
            observed,
            intervals: engine.intervals.clone(),
            day: None,
        })
    }

    /// An event about to be applied at `now` (once: after the duplicate check).
    pub fn event(&mut self, ev: &crate::event::Event, now: DateTime<Utc>) {
        let day = day_of(now);
        if self.day.is_none_or(|d| d < day) {
            self.intervals.record(day, &self.observed.figures());
            self.day = Some(day);
        }
        if let crate::event::EventData::OrderPlaced(placed) = &ev.data {
            let order: Arc<str> = placed.order_id.as_str().into();
            let categories = placed
                .items
                .iter()
                .filter(|i| i.quantity > 0)
                .map(|i| &*i.category);
            self.observed
                .order(&ev.subject, &order, ev.time, categories);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::days(days)
    }

    /// Orders read out of the order they were placed give the figures of the same orders read
    /// sorted (as `run` reads the store): a late order splits the interval it falls in.
    #[test]
    fn orders_in_any_order_give_the_figures_of_the_sorted_orders() {
        let film: Arc<str> = "film".into();
        let orders = [(0, "a"), (30, "c"), (10, "b"), (10, "b"), (45, "d")];
        let mut read = Observed::new([&film]);
        for (day, id) in orders {
            read.order(&"c".into(), &id.into(), at(day), ["film"]);
        }
        let mut sorted = Observed::new([&film]);
        for (day, id) in [(0, "a"), (10, "b"), (30, "c"), (45, "d")] {
            sorted.order(&"c".into(), &id.into(), at(day), ["film", "other"]);
        }
        // Intervals 10, 20, 15 days: the median is 15, from one repeat buyer.
        let expected = Interval {
            median: Duration::days(15),
            buyers: 1,
        };
        assert_eq!(read.figures(), [(film.clone(), expected)]);
        assert_eq!(sorted.figures(), [(film, expected)]);
    }

    #[test]
    fn a_figure_is_read_from_the_day_it_was_computed() {
        let intervals = Intervals::default();
        let i = |d| Interval {
            median: Duration::days(d),
            buyers: 30,
        };
        intervals.record(at(10), &[("film".into(), i(5))]);
        intervals.record(at(11), &[("film".into(), i(6))]);
        // A day recorded again keeps its first figure.
        intervals.record(at(11), &[("film".into(), i(7))]);
        assert_eq!(intervals.at("film", at(9)), None);
        assert_eq!(
            intervals.at("film", at(10) + Duration::hours(23)),
            Some(i(5))
        );
        assert_eq!(intervals.at("film", at(40)), Some(i(6)));
        assert_eq!(intervals.at("lens", at(40)), None);
        assert_eq!(intervals.latest(), [("film".into(), i(6))]);
    }
}
