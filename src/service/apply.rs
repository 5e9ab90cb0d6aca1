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
use crate::mail::token::Signer;
use crate::sequence::{JourneyKind, Sequence};
use crate::service::metrics::Metrics;
use crate::service::versions::Kept;
use crate::store::record::{from_stored, profile_and_orders, to_stored};
use crate::store::{Note, Result, Store, StoredCustomer, Tx};

/// What a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    pub events: usize,
    pub duplicates: usize,
    pub decisions: Vec<Decision>,
    /// For each event given, in order, what became of it.
    pub outcomes: Vec<Outcome>,
    /// The customers erased, with the addresses they had: the batch's dead letters that name
    /// them are not recorded either.
    pub erased: Vec<(String, Vec<String>)>,
}

/// What became of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Seen before (same `source` and `id`): no effect.
    Duplicate,
    /// Its customer's stored state cannot be read: the event is dead-lettered with this reason
    /// and not marked processed, so a replay once the state is mended applies it.
    Rejected(String),
}

impl Applied {
    /// The events rejected, by index, with their reasons.
    pub fn rejected(&self) -> impl Iterator<Item = (usize, &str)> {
        self.outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Outcome::Rejected(r) => Some((i, r.as_str())),
                Outcome::Applied | Outcome::Duplicate => None,
            })
    }
}

pub struct Applier {
    pub engine: Engine,
    /// Older sequence versions revived from the store.
    kept: Kept,
    /// Where wake-up lateness is observed, when metered.
    metrics: Option<Arc<Metrics>>,
    /// Keys the hashes erased addresses are kept as ([`Signer::address_hash`]).
    signer: Signer,
}

impl Applier {
    pub fn new(engine: Engine) -> Applier {
        Applier {
            engine,
            kept: Kept::default(),
            metrics: None,
            signer: Signer::new(super::DEV_SIGNING_KEY),
        }
    }

    /// Keeps erased addresses as hashes keyed by `signer` (the service's signing key).
    pub fn signing(mut self, signer: Signer) -> Applier {
        self.signer = signer;
        self
    }

    /// Observes how late each wake-up is in `metrics`.
    pub fn metered(mut self, metrics: Arc<Metrics>) -> Applier {
        self.metrics = Some(metrics);
        self
    }

    /// New journeys start on `catalog` from now on (hot reload); journeys in flight keep
    /// their versions, found in the store when the catalog no longer has them.
    pub fn reload(&mut self, catalog: Arc<crate::sequence::Catalog>) {
        self.engine = Engine::new(catalog, self.engine.policy.clone());
    }

    /// Applies a batch of events (in order) in one transaction.
    pub fn apply(
        &mut self,
        store: &mut dyn Store,
        events: &[Arc<Event>],
        now: DateTime<Utc>,
    ) -> Result<Applied> {
        self.apply_traced(store, events, &|_| tracing::Span::none(), now)
    }

    /// As [`Applier::apply`], each event handled inside `span_of(its index)`, with a child
    /// span per decision it caused.
    pub fn apply_traced(
        &mut self,
        store: &mut dyn Store,
        events: &[Arc<Event>],
        span_of: &dyn Fn(usize) -> tracing::Span,
        now: DateTime<Utc>,
    ) -> Result<Applied> {
        let mut tx = store.begin()?;
        let out = self.apply_in(&mut *tx, events, span_of, now)?;
        tx.commit()?;
        Ok(out)
    }

    /// As [`Applier::apply_traced`], inside the caller's transaction, which commits it (with
    /// the batch's dead letters).
    pub fn apply_in(
        &mut self,
        tx: &mut dyn Tx,
        events: &[Arc<Event>],
        span_of: &dyn Fn(usize) -> tracing::Span,
        now: DateTime<Utc>,
    ) -> Result<Applied> {
        let mut out = Applied::default();
        // Customers first: the events of one whose stored state cannot be read are rejected
        // before their keys are marked processed.
        let mut ids: Vec<&str> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for e in events {
            index.entry(&e.subject).or_insert_with(|| {
                ids.push(&e.subject);
                ids.len() - 1
            });
        }
        let loaded = tx.load(&ids)?;
        let mut customers: Vec<Result2<Customer>> = Vec::with_capacity(ids.len());
        for (id, stored) in ids.iter().zip(loaded) {
            let erased_here = || {
                events
                    .iter()
                    .any(|e| &*e.subject == *id && matches!(e.data, EventData::CustomerErased))
            };
            customers.push(match stored {
                Some(s) => match self.revive(tx, &s) {
                    // An erasure must work on a state that no longer reads: the profile's
                    // address, if it still reads, is all it needs.
                    Err(_) if erased_here() => {
                        let mut c = Customer::new((*id).into());
                        if let Ok((profile, _)) = profile_and_orders(&s) {
                            c.profile = Arc::new(crate::engine::Profile {
                                id: (*id).into(),
                                ..profile
                            });
                        }
                        Ok(c)
                    }
                    revived => revived,
                },
                None => Ok(Customer::new((*id).into())),
            });
        }
        out.outcomes = events
            .iter()
            .map(|e| match &customers[index[&*e.subject]] {
                Ok(_) => Outcome::Applied,
                Err(reason) => Outcome::Rejected(reason.clone()),
            })
            .collect();
        let readable: Vec<usize> = (0..events.len())
            .filter(|i| out.outcomes[*i] == Outcome::Applied)
            .collect();
        let keys: Vec<(&str, &str)> = readable.iter().map(|i| events[*i].key()).collect();
        let fresh = tx.first_sight(&keys, now)?;
        let mut fresh_events = Vec::with_capacity(readable.len());
        for (i, new) in readable.into_iter().zip(fresh) {
            if new {
                fresh_events.push((i, &events[i]));
            } else {
                out.outcomes[i] = Outcome::Duplicate;
                out.duplicates += 1;
            }
        }
        let mut notes = Vec::new();
        // Each customer's last event span: the steps its events made due run after the batch
        // and are traced under it.
        let mut last_span: Vec<Option<tracing::Span>> = vec![None; customers.len()];
        let mut erasures: Vec<Option<Erasure>> = vec![None; customers.len()];
        let mut subscribed: Vec<String> = Vec::new();
        for (i, e) in fresh_events {
            let ci = index[&*e.subject];
            if let Ok(c) = &mut customers[ci] {
                if matches!(e.data, EventData::CustomerErased) {
                    // What the batch decided for them before goes too.
                    out.decisions.retain(|d| *d.customer != *e.subject);
                    notes.retain(|n: &Note| *n.customer != *e.subject);
                    let erasure = erasures[ci].get_or_insert_with(Erasure::default);
                    erasure
                        .addresses
                        .extend(c.profile.email.as_deref().map(str::to_string));
                    erasure.written_after = false;
                    // A subscription earlier in the batch does not outlive the erasure.
                    let hashes = erasure.hashes(&self.signer);
                    subscribed.retain(|h| !hashes.contains(h));
                } else if let Some(erasure) = &mut erasures[ci] {
                    erasure.written_after = true;
                }
                let span = span_of(i);
                let before = out.decisions.len();
                span.in_scope(|| self.engine.handle_event(c, e, now, &mut out.decisions));
                crate::service::trace::decision_spans(&span, &out.decisions[before..]);
                last_span[ci] = Some(span);
                out.events += 1;
                notes.extend(note_of(e, now));
                if matches!(e.data, EventData::CustomerSubscribed { .. })
                    && let Some(address) = &c.profile.email
                {
                    subscribed.push(self.signer.address_hash(address));
                }
            }
        }
        // Steps made due by the batch run once all its events are applied (SPEC: ties).
        for (c, span) in customers.iter_mut().zip(&last_span) {
            let Ok(c) = c else { continue };
            let before = out.decisions.len();
            self.engine.wake(c, now, &mut out.decisions);
            if let Some(span) = span {
                crate::service::trace::decision_spans(span, &out.decisions[before..]);
            }
        }
        for (id, erasure) in ids.iter().zip(&erasures) {
            let Some(erasure) = erasure else { continue };
            tx.forget(id, &erasure.addresses, &erasure.hashes(&self.signer), now)?;
            tracing::info!(customer = %crate::service::trace::hashed(id), "customer erased");
            out.erased.push((id.to_string(), erasure.addresses.clone()));
        }
        if !subscribed.is_empty() {
            tx.unerase(&subscribed)?;
        }
        let stored: Vec<StoredCustomer> = customers
            .iter()
            .zip(&erasures)
            // An erased customer leaves no row, unless later events of the batch are theirs.
            .filter(|(_, erasure)| erasure.as_ref().is_none_or(|e| e.written_after))
            .filter_map(|(c, _)| c.as_ref().ok())
            .map(to_stored)
            .collect();
        tx.save(&stored)?;
        tx.record(&out.decisions)?;
        if !notes.is_empty() {
            tx.note(&notes)?;
        }
        Ok(out)
    }

    /// Erases one customer now, as a `customer.erased` event from `source` would
    /// (`aftercare forget`, `DELETE /api/customers/{id}`): the same path, one transaction.
    pub fn forget(&mut self, store: &mut dyn Store, customer: &str, source: &str) -> Result<()> {
        let event = Event::internal(
            "customer.erased",
            source,
            customer,
            EventData::CustomerErased,
        );
        self.apply(store, &[event], Utc::now())?;
        Ok(())
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
        if let Some(m) = &self.metrics {
            for s in &due {
                if let Some(at) = s.next_due {
                    let late = (now - at).num_microseconds().unwrap_or(0).max(0);
                    m.wake_lateness_seconds.observe(late as f64 / 1e6);
                }
            }
        }
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
                    tracing::error!(customer_id = %crate::redact::text(&s.id), %reason, "stored customer unreadable; its wake-ups are suspended");
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

    /// Suspends the wake-ups of the customer due first, leaving its state as stored: the one
    /// whose wake-up the store refuses (see `run`'s wake-ups). Its id, if any was due.
    pub fn park_first_due(
        &mut self,
        store: &mut dyn Store,
        now: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let mut tx = store.begin()?;
        let Some(first) = tx.claim_due(now, 1)?.pop() else {
            return Ok(None);
        };
        tx.save(&[StoredCustomer {
            next_due: None,
            ..first.clone()
        }])?;
        tx.commit()?;
        Ok(Some(first.id))
    }

    /// An operator's pause, resume or cancel of one journey, in one transaction (the
    /// customer row is locked on PostgreSQL, so it cannot race the engine thread).
    /// `Ok(None)`: no such customer; `Ok(Some(Err(_)))`: refused, nothing written.
    pub fn control(
        &mut self,
        store: &mut dyn Store,
        customer: &str,
        journey: crate::engine::JourneyId,
        op: crate::engine::Control,
        now: DateTime<Utc>,
    ) -> Result<Option<std::result::Result<Vec<Decision>, String>>> {
        let mut tx = store.begin()?;
        let Some(Some(stored)) = tx.load(&[customer])?.pop() else {
            return Ok(None);
        };
        let mut c = match self.revive(&mut *tx, &stored) {
            Ok(c) => c,
            Err(reason) => return Ok(Some(Err(reason))),
        };
        let mut decisions = Vec::new();
        if let Err(e) = self
            .engine
            .control(&mut c, journey, op, now, &mut decisions)
        {
            return Ok(Some(Err(e.to_string())));
        }
        // A resumed step that fell due while paused runs now.
        self.engine.wake(&mut c, now, &mut decisions);
        tx.save(&[to_stored(&c)])?;
        tx.record(&decisions)?;
        tx.commit()?;
        Ok(Some(Ok(decisions)))
    }

    /// A stored customer as an engine customer, journeys on their pinned versions.
    fn revive(&mut self, tx: &mut dyn Tx, s: &StoredCustomer) -> Result2<Customer> {
        let catalog = self.engine.catalog.clone();
        let kept = &mut self.kept;
        let mut failure = None;
        let mut resolve = |name: &str, version: &str| -> Option<Arc<Sequence>> {
            kept.resolve(&catalog, name, version, || tx.version(name, version))
                .unwrap_or_else(|e| {
                    failure = Some(e.to_string());
                    None
                })
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
        c.journeys.update_all(|j| {
            let Some(current) = self.engine.catalog.get(&j.sequence.name) else {
                return;
            };
            let Some(m) = &current.migrate else {
                return;
            };
            if Arc::ptr_eq(current, &j.sequence)
                || *m.from != *j.sequence.version
                || current.journey != j.sequence.journey
            {
                return;
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
        });
    }
}

type Result2<T> = std::result::Result<T, String>;

/// A `customer.erased` event met in a batch: the addresses the customer had, and whether
/// events after it wrote a new state (a customer who came back at once).
#[derive(Debug, Clone, Default)]
struct Erasure {
    addresses: Vec<String>,
    written_after: bool,
}

impl Erasure {
    /// The addresses as the store keeps them ([`Signer::address_hash`]).
    fn hashes(&self, signer: &Signer) -> Vec<String> {
        self.addresses
            .iter()
            .map(|a| signer.address_hash(a))
            .collect()
    }
}

/// The timeline line of an event about the customer as a whole: a change to what they
/// receive, or a feedback answer (`feedback nps 9`, at the event's time: NPS is computed from
/// these lines over a window).
fn note_of(e: &Event, now: DateTime<Utc>) -> Option<Note> {
    let (action, categories) = match &e.data {
        EventData::CustomerUnsubscribed { categories } => ("unsubscribe", categories),
        EventData::CustomerSubscribed { categories } => ("subscribe", categories),
        EventData::FeedbackSubmitted { kind, score, .. } => {
            let kind = match kind {
                crate::event::FeedbackKind::Nps => "nps",
                crate::event::FeedbackKind::Csat => "csat",
            };
            return Some(Note {
                customer: e.subject.to_string(),
                at: e.time,
                action: "feedback".into(),
                reason: format!("{kind} {score}"),
            });
        }
        _ => return None,
    };
    Some(Note {
        customer: e.subject.to_string(),
        at: now,
        action: action.into(),
        reason: format!("{} (from {})", categories.join(", "), e.source),
    })
}
