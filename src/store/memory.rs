//! The in-memory store: customers, processed-event keys and a wake-up queue.
//! `simulate` and the tests run on it; nothing survives the process.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::engine::{Customer, Engine};

#[derive(Default)]
pub struct MemoryStore {
    customers: HashMap<Arc<str>, Slot>,
    /// 128-bit digests of (source, id): a collision needs ~2^64 events.
    seen: HashSet<u128>,
    /// (due, customer); entries go stale when a customer's due time moves, see [`Slot`].
    queue: BinaryHeap<Reverse<(DateTime<Utc>, Arc<str>)>>,
}

struct Slot {
    customer: Customer,
    /// The due time queued for this customer, so an unchanged one is not queued twice.
    queued: Option<DateTime<Utc>>,
}

impl MemoryStore {
    /// Records the event key; false if it was seen before.
    pub fn first_sight(&mut self, source: &str, id: &str) -> bool {
        self.seen.insert(digest(source, id))
    }

    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.customers.get(id).map(|s| &s.customer)
    }

    /// The customer, created empty on first sight.
    pub fn customer_mut(&mut self, id: &Arc<str>) -> &mut Customer {
        &mut self
            .customers
            .entry(id.clone())
            .or_insert_with(|| Slot {
                customer: Customer::new(id.clone()),
                queued: None,
            })
            .customer
    }

    /// Queues the customer's next due time after the engine changed it.
    pub fn reschedule(&mut self, id: &Arc<str>) {
        let Some(slot) = self.customers.get_mut(id) else {
            return;
        };
        let due = Engine::next_due(&slot.customer);
        if due.is_some() && due != slot.queued {
            if let Some(at) = due {
                self.queue.push(Reverse((at, id.clone())));
            }
        }
        slot.queued = due;
    }

    /// The earliest customer due at or before `limit` (strictly before if `strict`).
    pub fn pop_due(&mut self, limit: DateTime<Utc>, strict: bool) -> Option<(DateTime<Utc>, Arc<str>)> {
        loop {
            let Reverse((at, _)) = self.queue.peek()?;
            if *at > limit || (strict && *at == limit) {
                return None;
            }
            let Reverse((at, id)) = self.queue.pop()?;
            // Skip entries superseded by a later reschedule.
            if self.customers.get(&id).is_some_and(|s| s.queued == Some(at)) {
                return Some((at, id));
            }
        }
    }

    pub fn customers(&self) -> impl Iterator<Item = &Customer> {
        self.customers.values().map(|s| &s.customer)
    }

    pub fn customer_count(&self) -> usize {
        self.customers.len()
    }
}

fn digest(source: &str, id: &str) -> u128 {
    let half = |seed: u64| {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        source.hash(&mut h);
        id.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}
