//! Events and wake-ups through the engine, in store transactions.
//!
//! One transaction per batch: mark the events processed (dedupe), load their customers, run
//! the engine, save the customers with their journeys, append the decisions and queue the
//! emails, commit. Only after that may the caller store the Kafka offsets.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::engine::{Customer, Decision, Engine};
use crate::event::{Event, EventData};
use crate::sequence::compile::compile_kept;
use crate::sequence::{JourneyKind, Sequence};
use crate::store::record::{from_stored, to_stored};
use crate::store::{Note, Result, Store, StoredCustomer, Tx};

/// What a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    pub events: usize,
    pub duplicates: usize,
    pub decisions: Vec<Decision>,
    /// Events whose customer's stored state could not be read: they go to the dead-letter
    /// topic with this reason rather than blocking the partition.
    pub rejected: Vec<(Arc<Event>, String)>,
}

pub struct Applier {
    pub engine: Engine,
    /// Older sequence versions revived from the store, by (name, version).
    kept: HashMap<(String, String), Arc<Sequence>>,
}

impl Applier {
    pub fn new(engine: Engine) -> Applier {
        Applier {
            engine,
            kept: HashMap::new(),
        }
    }

    /// Applies a batch of events (in order) in one transaction.
    pub fn apply(
        &mut self,
        store: &mut dyn Store,
        events: &[Arc<Event>],
        now: DateTime<Utc>,
    ) -> Result<Applied> {
        let mut out = Applied::default();
        let mut tx = store.begin()?;
        let keys: Vec<(&str, &str)> = events.iter().map(|e| e.key()).collect();
        let fresh = tx.first_sight(&keys, now)?;
        let events: Vec<&Arc<Event>> = events
            .iter()
            .zip(&fresh)
            .filter(|(_, f)| **f)
            .map(|(e, _)| e)
            .collect();
        out.duplicates = keys.len() - events.len();
        let mut ids: Vec<&str> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for e in &events {
            index.entry(&e.subject).or_insert_with(|| {
                ids.push(&e.subject);
                ids.len() - 1
            });
        }
        let loaded = tx.load(&ids)?;
        let mut customers: Vec<Result2<Customer>> = Vec::with_capacity(ids.len());
        for (id, stored) in ids.iter().zip(loaded) {
            customers.push(match stored {
                Some(s) => self.revive(&mut *tx, &s),
                None => Ok(Customer::new((*id).into())),
            });
        }
        let mut notes = Vec::new();
        for e in events {
            match &mut customers[index[&*e.subject]] {
                Ok(c) => {
                    self.engine.handle_event(c, e, now, &mut out.decisions);
                    out.events += 1;
                    notes.extend(note_of(e, now));
                }
                Err(reason) => out.rejected.push((e.clone(), reason.clone())),
            }
        }
        // Steps made due by the batch run once all its events are applied (SPEC: ties).
        for c in customers.iter_mut().flatten() {
            self.engine.wake(c, now, &mut out.decisions);
        }
        let stored: Vec<StoredCustomer> = customers
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(to_stored)
            .collect();
        tx.save(&stored)?;
        tx.record(&out.decisions)?;
        if !notes.is_empty() {
            tx.note(&notes)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Wakes up to `limit` customers due by `now`, in one transaction. Returns the decisions.
    pub fn wake(
        &mut self,
        store: &mut dyn Store,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<(usize, Vec<Decision>)> {
        let mut tx = store.begin()?;
        let due = tx.claim_due(now, limit)?;
        let mut decisions = Vec::new();
        let mut stored = Vec::with_capacity(due.len());
        for s in &due {
            match self.revive(&mut *tx, s) {
                Ok(mut c) => {
                    self.engine.wake(&mut c, now, &mut decisions);
                    stored.push(to_stored(&c));
                }
                Err(reason) => {
                    // Left as is, it would be claimed again at once; park it and say why.
                    tracing::error!(customer_id = %s.id, %reason, "stored customer unreadable; its wake-ups are suspended");
                    stored.push(StoredCustomer {
                        next_due: None,
                        ..s.clone()
                    });
                }
            }
        }
        tx.save(&stored)?;
        tx.record(&decisions)?;
        tx.commit()?;
        Ok((due.len(), decisions))
    }

    /// A stored customer as an engine customer, journeys on their pinned versions.
    fn revive(&mut self, tx: &mut dyn Tx, s: &StoredCustomer) -> Result2<Customer> {
        let catalog = self.engine.catalog.clone();
        let kept = &mut self.kept;
        let mut failure = None;
        let mut resolve = |name: &str, version: &str| -> Option<Arc<Sequence>> {
            if let Some(seq) = catalog.version(name, version) {
                return Some(seq.clone());
            }
            let key = (name.to_string(), version.to_string());
            if let Some(seq) = kept.get(&key) {
                return Some(seq.clone());
            }
            let record = match tx.version(name, version) {
                Ok(r) => r?,
                Err(e) => {
                    failure = Some(e.to_string());
                    return None;
                }
            };
            let seq = Arc::new(compile_kept(&record.path, &record.source).ok()?);
            kept.insert(key, seq.clone());
            Some(seq)
        };
        let mut c = from_stored(s, &mut resolve)?;
        if let Some(f) = failure {
            return Err(f);
        }
        self.migrate(&mut c);
        Ok(c)
    }

    /// Moves journeys to the current version of their sequence when that version declares
    /// `migrate: {from: <their version>}`; steps map by the `steps` table, else by id.
    fn migrate(&self, c: &mut Customer) {
        for j in c.journeys.iter_mut() {
            let Some(current) = self.engine.catalog.get(&j.sequence.name) else {
                continue;
            };
            let Some(m) = &current.migrate else {
                continue;
            };
            if Arc::ptr_eq(current, &j.sequence)
                || *m.from != *j.sequence.version
                || current.journey != j.sequence.journey
            {
                continue;
            }
            let old_id = &j.sequence.steps[j.step].id;
            let target = m
                .steps
                .iter()
                .find(|(from, _)| **from == **old_id)
                .map(|(_, to)| *to)
                .or_else(|| current.step_index(old_id));
            if let Some(step) = target {
                // A journey per order must keep its order; per customer has none.
                if current.journey == JourneyKind::PerCustomer || j.order_id.is_some() {
                    j.step = step;
                    j.sequence = current.clone();
                }
            }
        }
    }
}

type Result2<T> = std::result::Result<T, String>;

/// The timeline line of an event that changes what the customer receives as a whole.
fn note_of(e: &Event, now: DateTime<Utc>) -> Option<Note> {
    let (action, categories) = match &e.data {
        EventData::CustomerUnsubscribed { categories } => ("unsubscribe", categories),
        EventData::CustomerSubscribed { categories } => ("subscribe", categories),
        _ => return None,
    };
    Some(Note {
        customer: e.subject.to_string(),
        at: now,
        action: action.into(),
        reason: format!("{} (from {})", categories.join(", "), e.source),
    })
}
