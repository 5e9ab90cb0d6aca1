//! The store's reorder intervals (SPEC §9 `after: auto`): for a category, the median time
//! between consecutive orders of it among the customers who bought it at least twice,
//! computed at the start of each day (UTC) from the orders placed before it.
//!
//! `simulate` computes them as it reads the events ([`Observed::order`]), `run` from the
//! store at each midnight ([`Observed::customer`]): the same orders give the same figures.
//! The engine reads the figure of the day an order is placed ([`Intervals::at`]).

use std::collections::HashMap;
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
    /// Each customer's latest order of the category.
    last: HashMap<Arc<str>, Last>,
    /// Every interval between consecutive orders, in seconds.
    intervals: Vec<i64>,
    /// Customers with at least two orders of the category.
    buyers: u32,
}

#[derive(Debug)]
struct Last {
    at: DateTime<Utc>,
    order: Arc<str>,
    /// Counted among the repeat buyers already.
    repeat: bool,
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

    /// One order, in the order orders come: each watched category among `categories` adds the
    /// interval since the customer's previous order of it. An order seen again (the same id)
    /// adds nothing; one older than the customer's latest adds nothing either (`run` reads
    /// each customer's orders sorted, so late orders count there the same way only when they
    /// come in time order).
    pub fn order<'a>(
        &mut self,
        customer: &Arc<str>,
        order: &Arc<str>,
        placed: DateTime<Utc>,
        categories: impl IntoIterator<Item = &'a str>,
    ) {
        for name in categories {
            let Some(cat) = self.categories.get_mut(name) else {
                continue;
            };
            match cat.last.get_mut(customer) {
                None => {
                    let last = Last {
                        at: placed,
                        order: order.clone(),
                        repeat: false,
                    };
                    cat.last.insert(customer.clone(), last);
                }
                Some(last) if last.order != *order && placed >= last.at => {
                    cat.intervals.push((placed - last.at).num_seconds());
                    if !last.repeat {
                        last.repeat = true;
                        cat.buyers = cat.buyers.saturating_add(1);
                    }
                    last.at = placed;
                    last.order = order.clone();
                }
                Some(_) => {}
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
            let categories = o.items.iter().map(|i| &*i.category);
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

impl Category {
    fn figure(&self) -> Option<Interval> {
        if self.intervals.is_empty() {
            return None;
        }
        let mut v = self.intervals.clone();
        let mid = v.len() / 2;
        let (_, upper, _) = v.select_nth_unstable(mid);
        let upper = *upper;
        let median = if v.len() % 2 == 1 {
            upper
        } else {
            let lower = v[..mid].iter().copied().max().unwrap_or(upper);
            (lower + upper) / 2
        };
        let days = ((median as f64) / 86_400.0).round().max(1.0) as i64;
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
            let categories = placed.items.iter().map(|i| &*i.category);
            self.observed
                .order(&ev.subject, &order, ev.time, categories);
        }
    }
}
