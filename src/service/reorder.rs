//! `run`'s reorder intervals (SPEC §9 `after: auto`): at start, and at each UTC midnight,
//! every customer's orders are read from the store and the day's figures recorded — the same
//! computation `simulate` makes as it reads the events
//! ([`crate::engine::intervals::Observed`]), so the same orders give the same reminders.
//!
//! The scan reads every customer once a day, on the figures thread, page by page; it costs
//! about what decoding each customer's document costs (seconds per million customers), and
//! only when a sequence asks for `after: auto`.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::engine::intervals::{Interval, Intervals, Observed, day_of, watched};
use crate::sequence::Catalog;
use crate::store::{Store, StoreError};

/// Customers read per page of the scan.
const PAGE: usize = 1_000;

/// The figures of `categories` from every customer's orders placed before `before`.
pub fn compute(
    store: &mut dyn Store,
    categories: &[Arc<str>],
    before: DateTime<Utc>,
) -> Result<Vec<(Arc<str>, Interval)>, StoreError> {
    let mut observed = Observed::new(categories);
    let mut after = String::new();
    let mut unreadable = 0u64;
    loop {
        let page = store.customers_after(&after, PAGE)?;
        let Some(last) = page.last() else {
            break;
        };
        after = last.id.clone();
        for stored in &page {
            match crate::store::record::profile_and_orders(stored) {
                Ok((_, orders)) => observed.customer(&stored.id.as_str().into(), &orders, before),
                Err(_) => unreadable += 1,
            }
        }
    }
    if unreadable > 0 {
        tracing::warn!(
            customers = unreadable,
            "reorder intervals: stored customers unreadable, left out"
        );
    }
    Ok(observed.figures())
}

/// Keeps the service's intervals: the day's figures, recomputed when a day starts.
pub struct Daily {
    intervals: Arc<Intervals>,
    /// The day whose figures are recorded.
    done: Option<DateTime<Utc>>,
}

impl Daily {
    pub fn new(intervals: Arc<Intervals>) -> Daily {
        Daily {
            intervals,
            done: None,
        }
    }

    /// Records today's figures unless they are: from the orders placed before today began,
    /// for the categories `catalog` asks about. A store error is logged and tried again on
    /// the next call.
    pub fn refresh(&mut self, store: &mut dyn Store, catalog: &Catalog, now: DateTime<Utc>) {
        let today = day_of(now);
        if self.done.is_some_and(|d| d >= today) {
            return;
        }
        let categories = watched(catalog);
        if categories.is_empty() {
            self.done = Some(today);
            return;
        }
        let started = std::time::Instant::now();
        match compute(store, &categories, today) {
            Ok(figures) => {
                for (category, i) in &figures {
                    tracing::info!(
                        category = %category,
                        median_days = i.median.num_days(),
                        repeat_buyers = i.buyers,
                        "reorder interval of the day"
                    );
                }
                self.intervals.record(today, &figures);
                self.done = Some(today);
                tracing::info!(
                    seconds = started.elapsed().as_secs_f64(),
                    "reorder intervals recomputed"
                );
            }
            Err(e) => tracing::warn!(error = %e, "reorder intervals not recomputed; retrying"),
        }
    }
}
