//! Events and wake-ups through the engine, in store transactions.
//!
//! One transaction per batch: mark the events processed (dedupe), load their customers, run
//! the engine, save the customers with their journeys, append the decisions and queue the
//! emails, commit. Only after that may the caller store the Kafka offsets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::engine::{Customer, Decision, Engine};
use crate::event::{Event, EventData};
use crate::mail::token::Signer;
use crate::sequence::{JourneyKind, Sequence};
use crate::service::metrics::Metrics;
use crate::service::versions::Kept;
use crate::store::record::{
    Loaded, Unreadable, from_stored, has_rows, profile_and_orders, to_stored,
};
use crate::store::{Note, Result, Store, StoredCustomer, Tx};

/// What a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    pub events: usize,
    pub duplicates: usize,
    pub decisions: Vec<Decision>,
    /// For each event given, in order, what became of it.
    pub outcomes: Vec<Outcome>,
    /// The customers erased: the batch's dead letters that name them, from before the
    /// erasure, are not recorded either.
    pub erased: Vec<Erased>,
}

/// A customer erased by a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    pub customer: String,
    /// The addresses they had.
    pub addresses: Vec<String>,
    /// The index of the batch's (last) `customer.erased` event for them.
    pub event: usize,
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
    clock: Arc<dyn Clock>,
    /// Customers with many journeys or orders, as last saved: reviving one from its rows
    /// costs what its history costs, so it is kept while its stored revision is the same.
    hot: Hot,
}

/// The customers kept in memory between batches, least recently used dropped first.
#[derive(Default)]
struct Hot {
    /// Each with when it was last saved.
    customers: HashMap<String, (Instant, Loaded)>,
    /// Journeys and orders of the customers kept: what bounds the memory they take.
    items: usize,
    /// When customers idle for [`HOT_IDLE`] were last dropped.
    swept: Option<Instant>,
    /// The last revision given (see [`Hot::next_rev`]).
    rev: u64,
}

/// At most this many journeys and orders are kept in memory by one engine (a few hundred bytes
/// each; an order's line items count with it).
const HOT_ITEMS: usize = 200_000;

/// A customer not written for this long is no longer kept: memory goes back, and a customer
/// erased through another engine (the admin API, another instance) leaves none of its data
/// here for longer.
const HOT_IDLE: Duration = Duration::from_secs(600);

impl Hot {
    fn new() -> Hot {
        use std::hash::BuildHasher;
        // Revisions start at random: two instances (or one restarted) never write the same
        // ones, so a revision equal to one kept means the row was not written since.
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        Hot {
            rev: seed,
            ..Hot::default()
        }
    }

    /// A revision for a save: positive, never 0 (what other writers set).
    fn next_rev(&mut self) -> i64 {
        self.rev = self.rev.wrapping_add(1);
        ((self.rev & i64::MAX as u64) as i64).max(1)
    }

    /// The customer as kept, if the store's row is still at that revision.
    fn take(&mut self, id: &str, rev: i64) -> Option<Loaded> {
        let (_, kept) = self.customers.remove(id)?;
        self.items -= size(&kept);
        (rev != 0 && kept.rev == rev).then_some(kept)
    }

    /// Keeps customers just saved whose lists are rows, dropping those idle for
    /// [`HOT_IDLE`] and the least recently saved beyond [`HOT_ITEMS`].
    fn keep(&mut self, saved: impl IntoIterator<Item = Loaded>) {
        let now = Instant::now();
        for l in saved.into_iter().filter(Loaded::has_rows) {
            // One customer larger than the bound would push every other out, then itself.
            if size(&l) > HOT_ITEMS / 2 {
                continue;
            }
            self.items += size(&l);
            let id = l.customer.profile.id.to_string();
            if let Some((_, old)) = self.customers.insert(id, (now, l)) {
                self.items -= size(&old);
            }
        }
        if self.swept.is_none_or(|t| now - t >= HOT_IDLE / 10) {
            self.swept = Some(now);
            let items = &mut self.items;
            self.customers.retain(|_, (used, l)| {
                let keep = now - *used < HOT_IDLE;
                if !keep {
                    *items -= size(l);
                }
                keep
            });
        }
        while self.items > HOT_ITEMS {
            let Some(oldest) = self
                .customers
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            if let Some((_, l)) = self.customers.remove(&oldest) {
                self.items -= size(&l);
            }
        }
    }
}

fn size(l: &Loaded) -> usize {
    l.customer.journeys.len() + l.customer.orders.len()
}

impl Applier {
    pub fn new(engine: Engine) -> Applier {
        Applier {
            engine,
            kept: Kept::default(),
            metrics: None,
            signer: Signer::new(super::DEV_SIGNING_KEY),
            clock: crate::clock::system(),
            hot: Hot::new(),
        }
    }

    /// Reads the time from `clock` (the service's; tests set theirs).
    pub fn clocked(mut self, clock: Arc<dyn Clock>) -> Applier {
        self.clock = clock;
        self
    }

    /// What time it is, by this applier's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
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
        self.engine = self.engine.reloaded(catalog);
        // Customers kept in memory were migrated against the old catalog.
        self.hot = Hot::new();
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

    /// As [`Applier::apply`], but the events about customers the store does not hold are
    /// dropped, in the same transaction (so an erasure cannot slip in between): a link in an
    /// email sent before an erasure must not bring the customer back.
    pub fn apply_known(
        &mut self,
        store: &mut dyn Store,
        events: &[Arc<Event>],
        now: DateTime<Utc>,
    ) -> Result<Applied> {
        let mut tx = store.begin()?;
        // Each customer once: a store answers one row per id asked.
        let mut ids: Vec<&str> = events.iter().map(|e| &*e.subject).collect();
        ids.sort_unstable();
        ids.dedup();
        let held: std::collections::HashSet<&str> = ids
            .iter()
            .zip(tx.load(&ids)?)
            .filter_map(|(id, stored)| stored.map(|_| *id))
            .collect();
        let known: Vec<Arc<Event>> = events
            .iter()
            .filter(|e| held.contains(&*e.subject))
            .cloned()
            .collect();
        if known.is_empty() {
            return Ok(Applied::default());
        }
        let out = self.apply_in(&mut *tx, &known, &|_| tracing::Span::none(), now)?;
        tx.commit()?;
        Ok(out)
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
        let mut batch = self.load_batch(tx, events)?;
        for (i, e) in batch.fresh(tx, events, now, &mut out)? {
            self.handle(&mut batch, i, e, span_of(i), now, &mut out);
        }
        // Steps made due by the batch run once all its events are applied (SPEC: ties).
        for (c, span) in batch.customers.iter_mut().zip(&batch.last_span) {
            let Ok(Loaded { customer: c, .. }) = c else {
                continue;
            };
            let before = out.decisions.len();
            self.engine.wake(c, now, &mut out.decisions);
            if let Some(span) = span {
                traced(&mut batch.traced, span, &out.decisions[before..]);
            }
        }
        self.erase(tx, &batch, now, &mut out)?;
        let Batch {
            customers,
            erasures,
            notes,
            traced,
            ..
        } = batch;
        let saved: Vec<Loaded> = customers
            .into_iter()
            .zip(&erasures)
            // An erased customer leaves no row, unless later events of the batch are theirs.
            .filter(|(_, erasure)| erasure.as_ref().is_none_or(|e| e.written_after))
            .filter_map(|(c, _)| c.ok())
            .collect();
        self.save(tx, saved)?;
        tx.record(&out.decisions)?;
        if !traced.is_empty() {
            tx.trace_emails(&traced)?;
        }
        if !notes.is_empty() {
            tx.note(&notes)?;
        }
        Ok(out)
    }

    /// The batch's customers, each once, revived from the store.
    fn load_batch<'e>(&mut self, tx: &mut dyn Tx, events: &'e [Arc<Event>]) -> Result<Batch<'e>> {
        let mut ids: Vec<&str> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for e in events {
            index.entry(&e.subject).or_insert_with(|| {
                ids.push(&e.subject);
                ids.len() - 1
            });
        }
        let loaded = tx.load(&ids)?;
        let customers = self.revive_all(tx, &ids, loaded, |id, s, revived| match revived {
            // An erasure must work on a state that no longer reads: the profile's address, if
            // it still reads, is all it needs.
            Err(_)
                if events
                    .iter()
                    .any(|e| &*e.subject == id && matches!(e.data, EventData::CustomerErased)) =>
            {
                let mut c = Customer::new(id.into());
                if let Ok((profile, _)) = profile_and_orders(s) {
                    c.profile = Arc::new(crate::engine::Profile {
                        id: id.into(),
                        ..profile
                    });
                }
                Ok(Loaded::replacing(c, s))
            }
            revived => revived,
        })?;
        Ok(Batch {
            last_span: vec![None; ids.len()],
            erasures: vec![None; ids.len()],
            ids,
            index,
            customers,
            subscribed: Vec::new(),
            notes: Vec::new(),
            traced: Vec::new(),
        })
    }

    /// Applies one fresh event (`events[i]`) to its customer, inside `span`.
    fn handle(
        &mut self,
        batch: &mut Batch<'_>,
        i: usize,
        e: &Arc<Event>,
        span: tracing::Span,
        now: DateTime<Utc>,
        out: &mut Applied,
    ) {
        let ci = batch.index[&*e.subject];
        let Ok(Loaded { customer: c, .. }) = &mut batch.customers[ci] else {
            return;
        };
        if matches!(e.data, EventData::CustomerErased) {
            // What the batch decided for them before goes too.
            out.decisions.retain(|d| *d.customer != *e.subject);
            batch.notes.retain(|n: &Note| *n.customer != *e.subject);
            let erasure = batch.erasures[ci].get_or_insert_with(Erasure::default);
            erasure
                .addresses
                .extend(c.profile.email.as_deref().map(str::to_string));
            erasure.written_after = false;
            erasure.event = i;
            // A subscription earlier in the batch does not outlive the erasure.
            let hashes = erasure.hashes(&self.signer);
            batch.subscribed.retain(|h| !hashes.contains(h));
        } else if let Some(erasure) = &mut batch.erasures[ci] {
            erasure.written_after = true;
        }
        let before = out.decisions.len();
        span.in_scope(|| self.engine.handle_event(c, e, now, &mut out.decisions));
        out.events += 1;
        batch.notes.extend(note_of(e, now));
        if matches!(e.data, EventData::CustomerSubscribed { .. })
            && let Some(address) = &c.profile.email
        {
            batch.subscribed.push(self.signer.address_hash(address));
        }
        traced(&mut batch.traced, &span, &out.decisions[before..]);
        batch.last_span[ci] = Some(span);
    }

    /// Forgets the customers the batch erased, and un-erases the addresses it subscribed.
    fn erase(
        &mut self,
        tx: &mut dyn Tx,
        batch: &Batch<'_>,
        now: DateTime<Utc>,
        out: &mut Applied,
    ) -> Result<()> {
        for (id, erasure) in batch.ids.iter().zip(&batch.erasures) {
            let Some(erasure) = erasure else { continue };
            tx.forget(id, &erasure.addresses, &erasure.hashes(&self.signer), now)?;
            tracing::info!(customer = %crate::service::trace::hashed(id), "customer erased");
            out.erased.push(Erased {
                customer: id.to_string(),
                addresses: erasure.addresses.clone(),
                event: erasure.event,
            });
        }
        if !batch.subscribed.is_empty() {
            tx.unerase(&batch.subscribed)?;
        }
        Ok(())
    }

    /// Writes customers back, each as a new revision, and keeps the ones with many journeys
    /// or orders in memory as saved.
    fn save(&mut self, tx: &mut dyn Tx, mut saved: Vec<Loaded>) -> Result<()> {
        let stored: Vec<StoredCustomer> = saved
            .iter_mut()
            .map(|l| to_stored(l, self.hot.next_rev()))
            .collect();
        tx.save(&stored)?;
        // Kept only once written: if the transaction then fails to commit, the row keeps its
        // old revision and the copy kept is not used.
        self.hot.keep(saved);
        Ok(())
    }

    /// The stored customers `ids` (`loaded`, in that order) as engine customers: from memory
    /// when kept at the stored revision, else revived from the document and its rows;
    /// `fallback` may mend one that cannot be revived. A customer not stored is new.
    fn revive_all(
        &mut self,
        tx: &mut dyn Tx,
        ids: &[&str],
        loaded: Vec<Option<StoredCustomer>>,
        fallback: impl Fn(&str, &StoredCustomer, Revived) -> Revived,
    ) -> Result<Vec<Revived>> {
        let mut out: Vec<Option<Revived>> = Vec::with_capacity(ids.len());
        let mut unkept: Vec<(usize, StoredCustomer)> = Vec::new();
        for (i, (id, s)) in ids.iter().zip(loaded).enumerate() {
            let Some(s) = s else {
                self.hot.take(id, 0);
                out.push(Some(Ok(Loaded::new(Customer::new((*id).into())))));
                continue;
            };
            match self.hot.take(id, s.rev) {
                Some(kept) => out.push(Some(Ok(kept))),
                None => {
                    out.push(None);
                    unkept.push((i, s));
                }
            }
        }
        // The rows of those not kept in memory, in one read.
        let (with_rows, listed): (Vec<_>, Vec<_>) =
            unkept.into_iter().partition(|(_, s)| has_rows(&s.state));
        let (at, mut with_rows): (Vec<usize>, Vec<StoredCustomer>) = with_rows.into_iter().unzip();
        tx.rows(&mut with_rows)?;
        for (i, s) in at.into_iter().zip(with_rows).chain(listed) {
            let revived = self.revive(tx, &s)?;
            out[i] = Some(fallback(ids[i], &s, revived));
        }
        // Every place is filled: kept, new, or revived just now.
        Ok(out.into_iter().flatten().collect())
    }

    /// Erases one customer now, as a `customer.erased` event from `source` would
    /// (`aftercare forget`, `DELETE /api/customers/{id}`): the same path, one transaction.
    pub fn forget(&mut self, store: &mut dyn Store, customer: &str, source: &str) -> Result<()> {
        let now = self.now();
        let event = Event::internal(
            "customer.erased",
            source,
            customer,
            EventData::CustomerErased,
            now,
        );
        self.apply(store, &[event], now)?;
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
        let count = due.len();
        let ids: Vec<String> = due.iter().map(|s| s.id.clone()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut parked = Vec::new();
        let revived = self.revive_all(&mut *tx, &ids, due.into_iter().map(Some).collect(), |_, s, revived| {
            if let Err(reason) = &revived {
                // Left as is, it would be claimed again at once; park it and say why.
                tracing::error!(customer_id = %crate::redact::text(&s.id), %reason, "stored customer unreadable; its wake-ups are suspended");
            }
            revived
        })?;
        let mut saved = Vec::with_capacity(count);
        for (id, r) in ids.iter().zip(revived) {
            match r {
                Ok(mut l) => {
                    self.engine.wake(&mut l.customer, now, &mut decisions);
                    saved.push(l);
                }
                Err(_) => parked.push(*id),
            }
        }
        self.save(&mut *tx, saved)?;
        tx.park(&parked)?;
        tx.record(&decisions)?;
        tx.commit()?;
        Ok((count, decisions))
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
        tx.park(&[&first.id])?;
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
    ) -> Result<Option<std::result::Result<Vec<Decision>, Refused>>> {
        let mut tx = store.begin()?;
        let loaded = tx.load(&[customer])?;
        if loaded.iter().all(Option::is_none) {
            return Ok(None);
        }
        let revived = self
            .revive_all(&mut *tx, &[customer], loaded, |_, _, r| r)?
            .pop();
        let mut l = match revived {
            Some(Ok(l)) => l,
            Some(Err(reason)) => return Ok(Some(Err(Refused::Unreadable(reason)))),
            None => return Ok(None),
        };
        let mut decisions = Vec::new();
        if let Err(e) = self
            .engine
            .control(&mut l.customer, journey, op, now, &mut decisions)
        {
            return Ok(Some(Err(Refused::Control(e))));
        }
        // A resumed step that fell due while paused runs now.
        self.engine.wake(&mut l.customer, now, &mut decisions);
        self.save(&mut *tx, vec![l])?;
        tx.record(&decisions)?;
        tx.commit()?;
        Ok(Some(Ok(decisions)))
    }

    /// A stored customer as an engine customer, journeys on their pinned versions.
    /// A store error (the database away while a version is looked up) is the store's, and
    /// retried as such; only what the stored state itself says makes the customer unreadable.
    fn revive(&mut self, tx: &mut dyn Tx, s: &StoredCustomer) -> Result<Revived> {
        let catalog = self.engine.catalog.clone();
        let kept = &mut self.kept;
        let mut failure = None;
        let mut resolve = |name: &str, version: &str| -> Option<Arc<Sequence>> {
            kept.resolve(&catalog, name, version, || tx.version(name, version))
                .unwrap_or_else(|e| {
                    failure = Some(e);
                    None
                })
        };
        let revived = from_stored(s, &mut resolve);
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(revived.map(|mut l| {
            self.migrate(&mut l.customer);
            l
        }))
    }

    /// Moves journeys to the current version of their sequence when that version declares
    /// `migrate: {from: <their version>}`; steps map by the `steps` table, else by id.
    fn migrate(&self, c: &mut Customer) {
        let moves: Vec<(crate::engine::JourneyId, usize, Arc<Sequence>)> = c
            .journeys
            .iter()
            .filter_map(|j| {
                let current = self.engine.catalog.get(&j.sequence.name)?;
                let m = current.migrate.as_ref()?;
                if Arc::ptr_eq(current, &j.sequence)
                    || *m.from != *j.sequence.version
                    || current.journey != j.sequence.journey
                    // A journey per order must keep its order; per customer has none.
                    || (current.journey == JourneyKind::PerOrder && j.order_id.is_none())
                {
                    return None;
                }
                let old_id = &j.sequence.steps[j.step].id;
                let step = m
                    .steps
                    .iter()
                    .find(|(from, _)| **from == **old_id)
                    .map(|(_, to)| *to)
                    .or_else(|| current.step_index(old_id))?;
                Some((j.id, step, current.clone()))
            })
            .collect();
        // Only the journeys that move are changed (and so rewritten).
        for (id, step, sequence) in moves {
            if let Some(ji) = c.journeys.find(id) {
                c.journeys.update(ji, |j| {
                    j.step = step;
                    j.sequence = sequence;
                });
            }
        }
    }
}

/// Why an operator's control of a journey was refused (nothing written).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Control(#[from] crate::engine::ControlError),
    #[error("the customer's stored state cannot be read: {0}")]
    Unreadable(Unreadable),
}

/// A stored customer revived, or why it cannot be.
type Revived = std::result::Result<Loaded, Unreadable>;

/// One batch of events while it is applied: its customers (each once, in order of first
/// appearance) and what it gathers for the transaction.
struct Batch<'e> {
    ids: Vec<&'e str>,
    /// Customer id → place in `ids`.
    index: HashMap<&'e str, usize>,
    customers: Vec<Revived>,
    /// Each customer's last event span: the steps its events made due run after the batch
    /// and are traced under it.
    last_span: Vec<Option<tracing::Span>>,
    erasures: Vec<Option<Erasure>>,
    /// Hashes of the addresses subscribed by the batch.
    subscribed: Vec<String>,
    notes: Vec<Note>,
    /// (outbox key, `traceparent`) of the emails queued under an exported span.
    traced: Vec<(String, String)>,
}

impl<'e> Batch<'e> {
    /// Which events to apply: their customers' state reads (else they are rejected, before
    /// their keys are marked processed) and they were not seen before.
    fn fresh(
        &self,
        tx: &mut dyn Tx,
        events: &'e [Arc<Event>],
        now: DateTime<Utc>,
        out: &mut Applied,
    ) -> Result<Vec<(usize, &'e Arc<Event>)>> {
        out.outcomes = events
            .iter()
            .map(|e| match &self.customers[self.index[&*e.subject]] {
                Ok(_) => Outcome::Applied,
                Err(reason) => Outcome::Rejected(reason.to_string()),
            })
            .collect();
        let readable: Vec<usize> = (0..events.len())
            .filter(|i| out.outcomes[*i] == Outcome::Applied)
            .collect();
        let keys: Vec<(&str, &str)> = readable.iter().map(|i| events[*i].key()).collect();
        let seen = tx.first_sight(&keys, now)?;
        let mut fresh = Vec::with_capacity(readable.len());
        for (i, new) in readable.into_iter().zip(seen) {
            if new {
                fresh.push((i, &events[i]));
            } else {
                out.outcomes[i] = Outcome::Duplicate;
                out.duplicates += 1;
            }
        }
        Ok(fresh)
    }
}

/// A child span of `span` per decision, and the trace context kept (in `traced`) with each
/// email queued, so its send continues the trace.
fn traced(traced: &mut Vec<(String, String)>, span: &tracing::Span, decisions: &[Decision]) {
    crate::service::trace::decision_spans(span, decisions);
    if !decisions.iter().any(|d| d.email.is_some()) {
        return;
    }
    let Some(parent) = crate::service::trace::traceparent(span) else {
        return;
    };
    for d in decisions {
        if let (Some(_), Some(step)) = (&d.email, &d.step) {
            traced.push((format!("{}:{step}", d.journey), parent.clone()));
        }
    }
}

/// A `customer.erased` event met in a batch: the addresses the customer had, and whether
/// events after it wrote a new state (a customer who came back at once).
#[derive(Debug, Clone, Default)]
struct Erasure {
    addresses: Vec<String>,
    written_after: bool,
    /// The index of the last `customer.erased` event.
    event: usize,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Duration;

    use super::Applier;
    use crate::engine::journeys::THRESHOLDS;
    use crate::engine::journeys::tests::{catalog, events, line};
    use crate::engine::{Control, Engine, Policy};
    use crate::store::JourneyRow;

    /// Every decision `run`'s path makes on a SQLite store for the stream, and each customer's
    /// journeys as stored at the end. Along the way the engine's copies kept in memory go cold
    /// (a restart) and another writer (an operator's pause, as the admin API does it) changes
    /// customers under them.
    fn run(
        db: &Db,
        thresholds: (usize, usize),
        events: &[crate::event::Event],
    ) -> (Vec<String>, Vec<Vec<JourneyRow>>, i64) {
        let before = THRESHOLDS.with(|t| t.replace(thresholds));
        let url = db.fresh();
        let mut store = crate::store::open(&url).unwrap();
        let engine = || Engine::new(catalog(), Policy::default());
        store
            .save_versions(&crate::service::versions_of(&engine().catalog))
            .unwrap();
        let mut applier = Applier::new(engine());
        let mut operator = Applier::new(engine());
        let mut out = Vec::new();
        let mut refused = Vec::new();
        let mut now = events[0].time;
        for (i, chunk) in events.chunks(5).enumerate() {
            let chunk: Vec<Arc<crate::event::Event>> =
                chunk.iter().cloned().map(Arc::new).collect();
            now = now.max(chunk.iter().map(|e| e.time).max().unwrap());
            out.extend(applier.apply(&mut *store, &chunk, now).unwrap().decisions);
            loop {
                let (n, woken) = applier.wake(&mut *store, now, 50).unwrap();
                out.extend(woken);
                if n == 0 {
                    break;
                }
            }
            if i % 41 == 40 {
                applier = Applier::new(engine());
            }
            if i % 7 == 3 {
                let who = &chunk[0].subject;
                let (stored, _) = store.customer(who).unwrap().unwrap();
                let journeys = crate::store::record::journeys(&stored).unwrap();
                if let Some(j) = journeys.get(i % journeys.len().max(1)) {
                    let op = if j.held {
                        Control::Resume
                    } else {
                        Control::Pause
                    };
                    match operator.control(&mut *store, who, j.id, op, now).unwrap() {
                        Some(Ok(done)) => out.extend(done),
                        other => refused.push(format!("{i} {who} {op:?}: {other:?}")),
                    }
                }
            }
        }
        let end = now + Duration::days(60);
        loop {
            let (n, woken) = applier.wake(&mut *store, end, 50).unwrap();
            out.extend(woken);
            if n == 0 {
                break;
            }
        }
        let lines: Vec<String> = out.iter().map(line).collect();
        let journeys = ["c0", "c1", "c2"]
            .iter()
            .map(|c| {
                let (stored, _) = store.customer(c).unwrap().unwrap();
                crate::store::record::journeys(&stored).unwrap()
            })
            .collect();
        drop(store);
        let rows = db.rows();
        THRESHOLDS.with(|t| t.set(before));
        let mut lines: Vec<String> = lines;
        lines.extend(refused);
        (lines, journeys, rows)
    }

    /// A store for one run: a SQLite file, or a schema of its own on the PostgreSQL server of
    /// the store tests (`AFTERCARE_TEST_PG`).
    enum Db {
        Sqlite(std::path::PathBuf),
        Postgres(String),
    }

    impl Db {
        /// The store's URL, emptied.
        fn fresh(&self) -> String {
            match self {
                Db::Sqlite(dir) => {
                    let _ = std::fs::remove_dir_all(dir);
                    std::fs::create_dir_all(dir).unwrap();
                    format!("sqlite://{}", dir.join("a.db").display())
                }
                Db::Postgres(schema) => {
                    let mut c = postgres::Client::connect(&pg(), postgres::NoTls).unwrap();
                    c.batch_execute(&format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                    ))
                    .unwrap();
                    format!("{}?options=-csearch_path%3D{schema}", pg())
                }
            }
        }

        /// Journey and order rows stored.
        fn rows(&self) -> i64 {
            const ROWS: &str =
                "SELECT (SELECT COUNT(*) FROM journey_rows) + (SELECT COUNT(*) FROM order_rows)";
            match self {
                Db::Sqlite(dir) => rusqlite::Connection::open(dir.join("a.db"))
                    .unwrap()
                    .query_row(ROWS, [], |r| r.get(0))
                    .unwrap(),
                Db::Postgres(schema) => {
                    let url = format!("{}?options=-csearch_path%3D{schema}", pg());
                    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                    c.query_one(ROWS, &[]).unwrap().get(0)
                }
            }
        }
    }

    impl Drop for Db {
        fn drop(&mut self) {
            match self {
                Db::Sqlite(dir) => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Db::Postgres(schema) => {
                    if let Ok(mut c) = postgres::Client::connect(&pg(), postgres::NoTls) {
                        let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
                    }
                }
            }
        }
    }

    fn pg() -> String {
        std::env::var("AFTERCARE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// Journeys and orders kept as rows, changed row by row, the customers kept in memory
    /// between batches: `run` decides and stores exactly what it does with every customer one
    /// document, on SQLite and on PostgreSQL.
    #[test]
    fn customers_kept_as_rows_decide_and_store_exactly_as_documents() {
        let events = events(7, 1_500);
        let tag = format!("{}", std::process::id());
        for db in [
            Db::Sqlite(std::env::temp_dir().join(format!("aftercare-rows-{tag}"))),
            Db::Postgres(format!("aftercare_rows_{tag}")),
        ] {
            same_decisions_and_journeys(&db, &events);
        }
    }

    fn same_decisions_and_journeys(db: &Db, events: &[crate::event::Event]) {
        let (mut listed, listed_journeys, none) = run(db, (usize::MAX, 0), events);
        // As rows from the second journey or order on, back to a list below two journeys.
        let (mut rows, rows_journeys, some) = run(db, (2, 2), events);
        // Customers due at the same instant wake in the order the store's index gives them,
        // which its rewrites move: each customer's own decisions keep their order.
        let instant_and_customer =
            |line: &String| -> String { line.splitn(3, ' ').take(2).collect::<Vec<_>>().join(" ") };
        listed.sort_by_key(instant_and_customer);
        rows.sort_by_key(instant_and_customer);
        assert_eq!(none, 0);
        assert!(some > 100, "{some} rows");
        assert!(listed.len() > 1_500, "{} decisions", listed.len());
        let first_difference = listed.iter().zip(&rows).position(|(a, b)| a != b);
        assert_eq!(
            (first_difference, listed.len()),
            (None, rows.len()),
            "{:?} vs {:?}",
            first_difference.map(|i| &listed[i]),
            first_difference.map(|i| &rows[i])
        );
        assert_eq!(listed_journeys, rows_journeys);
    }
}
