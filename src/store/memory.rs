//! The in-memory store: customers, processed-event keys and a wake-up queue.
//! `simulate` and the tests run on it; nothing survives the process.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::engine::{Customer, Engine};

/// Position of a customer in `MemoryStore::slots`.
type Idx = u32;

/// FxHash (rustc's): customer ids are looked up for every event, and SipHash's protection
/// against chosen keys buys nothing in a replay of the operator's own file.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

pub type FxBuild = BuildHasherDefault<FxHasher>;

#[derive(Default)]
pub struct MemoryStore {
    index: HashMap<Arc<str>, Idx, FxBuild>,
    slots: Vec<Slot>,
    /// 128-bit digests of (source, id): a collision needs ~2^64 events.
    seen: HashSet<u128>,
    /// (due, ordinal, slot): entries go stale when a customer's due time moves, see
    /// [`Slot::queued`]. Customers due at the same instant wake in ordinal order (the order
    /// they were first seen).
    queue: BinaryHeap<Reverse<(DateTime<Utc>, u32, Idx)>>,
}

struct Slot {
    customer: Customer,
    /// Orders customers due at the same instant: first-seen order, across partitions too.
    ordinal: u32,
    /// The due time queued for this customer, so an unchanged one is not queued twice.
    queued: Option<DateTime<Utc>>,
}

impl MemoryStore {
    /// Records the event key; false if it was seen before.
    pub fn first_sight(&mut self, source: &str, id: &str) -> bool {
        self.seen.insert(digest(source, id))
    }

    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.index
            .get(id)
            .map(|i| &self.slots[*i as usize].customer)
    }

    /// The customer's slot, created empty on first sight.
    pub fn slot_of(&mut self, id: &Arc<str>) -> Idx {
        let next = self.slots.len() as u32;
        self.slot_with(id, next)
    }

    /// As [`slot_of`](Self::slot_of), with the tie-breaking ordinal chosen by the caller (a
    /// partition of a parallel replay uses the customer's global first-seen position).
    pub fn slot_with(&mut self, id: &Arc<str>, ordinal: u32) -> Idx {
        if let Some(i) = self.index.get(id) {
            return *i;
        }
        let i = self.slots.len() as Idx;
        self.slots.push(Slot {
            customer: Customer::new(id.clone()),
            ordinal,
            queued: None,
        });
        self.index.insert(id.clone(), i);
        i
    }

    pub fn ordinal(&self, slot: Idx) -> u32 {
        self.slots[slot as usize].ordinal
    }

    pub fn customer_at(&mut self, slot: Idx) -> &mut Customer {
        &mut self.slots[slot as usize].customer
    }

    /// The customer, created empty on first sight.
    pub fn customer_mut(&mut self, id: &Arc<str>) -> &mut Customer {
        let i = self.slot_of(id);
        self.customer_at(i)
    }

    /// Queues the customer's next due time after the engine changed it.
    pub fn reschedule(&mut self, slot: Idx) {
        let s = &mut self.slots[slot as usize];
        let due = Engine::next_due(&s.customer);
        if let Some(at) = due.filter(|_| due != s.queued) {
            self.queue.push(Reverse((at, s.ordinal, slot)));
        }
        s.queued = due;
    }

    /// The earliest customer due at or before `limit` (strictly before if `strict`).
    pub fn pop_due(&mut self, limit: DateTime<Utc>, strict: bool) -> Option<(DateTime<Utc>, Idx)> {
        loop {
            let Reverse((at, _, _)) = self.queue.peek()?;
            if *at > limit || (strict && *at == limit) {
                return None;
            }
            let Reverse((at, _, slot)) = self.queue.pop()?;
            // Skip entries superseded by a later reschedule.
            if self.slots[slot as usize].queued == Some(at) {
                return Some((at, slot));
            }
        }
    }

    pub fn customers(&self) -> impl Iterator<Item = &Customer> {
        self.slots.iter().map(|s| &s.customer)
    }

    pub fn customer_count(&self) -> usize {
        self.slots.len()
    }
}

/// The dedupe key of an event: 128 bits of (source, id).
pub fn digest(source: &str, id: &str) -> u128 {
    let half = |seed: u64| {
        let mut h = DefaultHasher::new();
        seed.hash(&mut h);
        source.hash(&mut h);
        id.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}
