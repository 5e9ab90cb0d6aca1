//! A batch of messages into the store, whatever the messages hold.
//!
//! One transaction per batch: the effects of its events and the dead letters of the messages
//! that could not be applied (malformed, or their customer's state unreadable) commit together,
//! so once the offsets move nothing is lost. What goes wrong decides what happens next:
//!
//! - a **transient** error (the database away, a lock, a timeout) retries the same work with
//!   backoff, and `/readyz` shows it while it lasts ([`super::health`]);
//! - a **permanent** one (a value the database refuses, an event the engine cannot apply) is
//!   caused by some message of the batch: the batch is split in halves, each applied on its
//!   own, until the message is alone; it is then dead-lettered with the reason and the rest of
//!   the batch goes on. A bad message costs about 2·log₂(batch) extra transactions.

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rdkafka::Message as _;
use rdkafka::message::{Headers as _, OwnedMessage};

use super::apply::{Applied, Applier};
use super::health::{Backoff, component};
use super::kafka::Batch;
use super::metrics::ClassLabels;
use super::{Shutdown, Stats};
use crate::event::Event;
use crate::store::{DeadLetter, ErrorClass, Store, StoreError};

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Every message applied or dead-lettered, durably: its offsets may be stored.
    Done,
    /// Told to stop first: nothing more is acknowledged.
    Stopped,
}

/// Why an attempt at a batch failed.
enum Failure {
    Store(StoreError),
    /// The engine panicked: a bug met by some event, which must not stop every other.
    Engine(String),
}

impl Failure {
    fn class(&self) -> ErrorClass {
        match self {
            Failure::Store(e) => e.class(),
            Failure::Engine(_) => ErrorClass::Permanent,
        }
    }

    /// What went wrong, for `/readyz` and the log.
    fn text(&self) -> String {
        match self {
            Failure::Store(e) => e.to_string(),
            Failure::Engine(p) => format!("the engine failed: {p}"),
        }
    }

    /// The dead-letter reason and its class.
    fn reason(&self) -> (String, &'static str) {
        match self {
            Failure::Store(e) => (format!("the store refused the event: {e}"), "store_refused"),
            Failure::Engine(p) => (
                format!("the engine failed on the event: {p}"),
                "engine_failed",
            ),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Store(e)
    }
}

/// The engine thread's handle on the store, for batches of messages.
pub struct Ingest<'a> {
    pub store: &'a mut dyn Store,
    pub applier: &'a mut Applier,
    pub stats: &'a Stats,
    pub stop: &'a Shutdown,
}

impl Ingest<'_> {
    /// Applies the batch, or the parts of it that can be, dead-lettering the rest.
    pub fn batch(&mut self, batch: &Batch) -> Settled {
        self.settle(batch, 0..batch.messages.len())
    }

    fn settle(&mut self, batch: &Batch, range: Range<usize>) -> Settled {
        let failure = match self.commit_retrying(batch, range.clone()) {
            Ok(settled) => return settled,
            Err(f) => f,
        };
        if range.len() == 1 {
            let (reason, class) = failure.reason();
            let letter = letter(&batch.messages[range.start], reason, class);
            return self.dead_letter_alone(letter);
        }
        let mid = range.start + range.len() / 2;
        match self.settle(batch, range.start..mid) {
            Settled::Done => self.settle(batch, mid..range.end),
            Settled::Stopped => Settled::Stopped,
        }
    }

    /// Commits `range`, retrying transient errors until it commits or the service stops;
    /// `Err`: a permanent error, for the caller to isolate.
    fn commit_retrying(&mut self, batch: &Batch, range: Range<usize>) -> Result<Settled, Failure> {
        let mut backoff = Backoff::default();
        loop {
            match self.commit(batch, range.clone()) {
                Ok(()) => {
                    self.stats.health.recovered(component::INGEST);
                    return Ok(Settled::Done);
                }
                Err(f) if f.class() == ErrorClass::Permanent => {
                    if range.len() > 1 {
                        tracing::warn!(error = %f.text(), messages = range.len(), "batch refused; splitting it to find the message that causes it");
                    }
                    return Err(f);
                }
                Err(f) => {
                    let wait = backoff.wait();
                    self.stats
                        .health
                        .failing(component::INGEST, &f.text(), wait);
                    if !pause(wait, self.stop) {
                        return Ok(Settled::Stopped);
                    }
                }
            }
        }
    }

    /// One transaction: the events of `range`, and the dead letters of its messages that
    /// are malformed or whose customer cannot be read.
    fn commit(&mut self, batch: &Batch, range: Range<usize>) -> Result<(), Failure> {
        let now = self.applier.now();
        let mut events: Vec<Arc<Event>> = Vec::with_capacity(range.len());
        // Each event's message, and its place in the batch.
        let mut origin: Vec<(&OwnedMessage, usize)> = Vec::with_capacity(range.len());
        // Dead letters with their messages' places.
        let mut dead: Vec<(usize, DeadLetter)> = Vec::new();
        for (at, (m, decoded)) in batch.messages[range.clone()]
            .iter()
            .zip(&batch.decoded[range])
            .enumerate()
        {
            match decoded {
                Ok(e) => {
                    events.push(e.clone());
                    origin.push((m, at));
                }
                Err(e) => dead.push((at, letter(m, e.to_string(), e.class()))),
            }
        }
        let span_of = |i: usize| super::trace::event_span(origin[i].0, &events[i]);
        let mut tx = self.store.begin()?;
        let applier = &mut *self.applier;
        let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
            applier.apply_in(&mut *tx, &events, &span_of, now)
        }))
        .map_err(|p| Failure::Engine(panic_text(&*p)))??;
        for (i, reason) in applied.rejected() {
            let reason = format!("the customer's stored state cannot be read: {reason}");
            let (m, at) = origin[i];
            dead.push((at, letter(m, reason, "customer_unreadable")));
        }
        // An erasure in the batch takes the batch's dead letters about the customer from
        // before it too; one that came after is new, as it would be in the next batch.
        let dead: Vec<DeadLetter> = dead
            .into_iter()
            .filter(|(at, d)| {
                !applied
                    .erased
                    .iter()
                    .any(|e| *at < origin[e.event].1 && d.mentions(&e.customer, &e.addresses))
            })
            .map(|(_, d)| d)
            .collect();
        tx.dead_letter(&dead, now)?;
        tx.commit()?;
        self.count(&events, &applied, &dead);
        Ok(())
    }

    /// Records a dead letter in a transaction of its own. Only the store being away can stop
    /// that (the letter holds bytes and escaped text), so every error is retried: the message
    /// is never acknowledged unrecorded.
    fn dead_letter_alone(&mut self, letter: DeadLetter) -> Settled {
        let mut backoff = Backoff::default();
        loop {
            let now = self.applier.now();
            let attempt = self.store.begin().and_then(|mut tx| {
                tx.dead_letter(std::slice::from_ref(&letter), now)?;
                tx.commit()
            });
            match attempt {
                Ok(()) => {
                    self.stats.health.recovered(component::INGEST);
                    self.count(&[], &Applied::default(), std::slice::from_ref(&letter));
                    return Settled::Done;
                }
                Err(e) => {
                    let wait = backoff.wait();
                    let error = format!("cannot record a dead letter: {e}");
                    self.stats.health.failing(component::INGEST, &error, wait);
                    if !pause(wait, self.stop) {
                        return Settled::Stopped;
                    }
                }
            }
        }
    }

    fn count(&self, events: &[Arc<Event>], applied: &Applied, dead: &[DeadLetter]) {
        let (stats, m) = (self.stats, &self.stats.metrics);
        for d in dead {
            tracing::warn!(
                topic = %d.topic,
                partition = d.partition,
                offset = d.offset,
                class = %d.class,
                reason = %crate::redact::text(&d.reason),
                "message dead-lettered"
            );
            m.dead_letters
                .get_or_create(&ClassLabels {
                    class: d.class.clone(),
                })
                .inc();
        }
        let malformed = dead.len() - applied.rejected().count();
        stats
            .dead_letters
            .fetch_add(dead.len() as u64, Ordering::Relaxed);
        m.event("invalid", "dead_lettered", malformed as u64);
        m.events_applied(events, &applied.outcomes);
        m.decided(&applied.decisions);
        m.batches.inc();
        stats
            .events
            .fetch_add(applied.events as u64, Ordering::Relaxed);
        stats
            .duplicates
            .fetch_add(applied.duplicates as u64, Ordering::Relaxed);
        stats
            .decisions
            .fetch_add(applied.decisions.len() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        for d in &applied.decisions {
            tracing::debug!(customer_id = %crate::redact::text(&d.customer), sequence = %d.sequence, step = ?d.step.as_deref(), action = %d.action, reason = %d.reason, "decision");
        }
    }
}

/// A message as a dead letter: key, value and headers as read.
pub fn letter(m: &OwnedMessage, reason: String, class: &str) -> DeadLetter {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    DeadLetter {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().unwrap_or_default().to_vec(),
        headers,
        // Whatever produced the reason, it must be storable (PostgreSQL text holds no NUL),
        // or recording the dead letter would fail in turn.
        reason: reason.replace('\0', "\\u{0}"),
        class: class.to_string(),
    }
}

/// What a panic said.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let text = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    crate::redact::text(&text)
}

/// Waits `d` unless told to stop; false if told to stop.
pub fn pause(d: std::time::Duration, stop: &Shutdown) -> bool {
    !stop.wait_timeout(d)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::{Ingest, Settled};
    use crate::engine::{Engine, Policy};
    use crate::service::Stats;
    use crate::service::apply::Applier;
    use crate::service::kafka::{Batch, decode};
    use crate::store::DeadLetterQuery;

    fn message(offset: i64, key: &str, value: &str) -> OwnedMessage {
        OwnedMessage::new(
            Some(value.as_bytes().to_vec()),
            Some(key.as_bytes().to_vec()),
            "orders".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        )
    }

    /// An erasure takes the batch's dead letters about the customer from before it (they are
    /// part of what is erased), and keeps one that came after, as the next batch would.
    #[test]
    fn an_erasure_takes_the_dead_letters_before_it_and_keeps_those_after() {
        let dir = std::env::temp_dir().join(format!("aftercare-ingest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("a.db").display());
        let mut store = crate::store::open(&url).unwrap();
        let catalog = crate::engine::journeys::tests::catalog();
        let mut applier = Applier::new(Engine::new(catalog, Policy::default()));
        let erased = r#"{"specversion":"1.0","id":"x1","source":"/privacy","type":"customer.erased","time":"2024-01-01T00:00:00Z","subject":"ann"}"#;
        let mut batch = Batch {
            messages: vec![
                message(0, "ann", "before: not JSON"),
                message(1, "ann", erased),
                message(2, "ann", "after: not JSON"),
                message(3, "bob", "bob's: not JSON"),
            ],
            decoded: Vec::new(),
            bytes: 0,
        };
        batch.decoded = batch
            .messages
            .iter()
            .map(|m| decode(m, 1 << 20).map(Arc::new))
            .collect();
        let stats = Stats::default();
        let stop = crate::service::Shutdown::new();
        let mut ingest = Ingest {
            store: &mut *store,
            applier: &mut applier,
            stats: &stats,
            stop: &stop,
        };
        assert_eq!(ingest.batch(&batch), Settled::Done);
        let kept: Vec<i64> = store
            .dead_letters(&DeadLetterQuery::default())
            .unwrap()
            .iter()
            .map(|d| d.letter.offset)
            .collect();
        assert_eq!(kept, [3, 2]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
