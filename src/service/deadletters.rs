//! Dead letters out: from the store, where the engine records them with the progress past
//! them, to `kafka.dlq_topic`.
//!
//! The publisher claims unpublished dead letters (a lease, so instances sharing a PostgreSQL
//! store do not publish one twice), sends each with its key, value and headers unchanged plus
//! `aftercare.error`, `aftercare.source.topic`, `.partition` and `.offset`, and records what the
//! broker said. A record the topic refuses as too large is sent again with its value cut to
//! `kafka.dlq_max_bytes`, marked `aftercare.truncated: true` and `aftercare.original.size`; the
//! store keeps it whole. Any other refusal is retried with backoff — the broker away, an
//! unknown topic — and shows in `/readyz` until it passes; a record refused even when cut
//! stays in the store only, counted as `refused`.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use super::health::{Backoff, component};
use super::metrics::OutcomeLabels;
use super::{Shutdown, Stats};
use crate::clock::Clock;
use crate::config::Kafka as KafkaConfig;
use crate::store::{Published, Store, StoredDeadLetter};

/// Dead letters claimed at a time.
const CLAIM: usize = 64;
/// How long a claim lasts: past it another instance may publish the letter (once more).
const LEASE_SECS: i64 = 60;
/// How long the broker has to acknowledge a claimed set.
const FLUSH: Duration = Duration::from_secs(15);
/// How often the store is looked at when nobody rang.
const IDLE: Duration = Duration::from_secs(1);

/// Delivery reports, by the index of the record in the set being sent.
#[derive(Default)]
pub struct Reports(Mutex<Vec<(usize, KafkaResult<()>)>>);

impl Reports {
    /// The reports received so far, leaving none.
    pub fn take(&self) -> Vec<(usize, KafkaResult<()>)> {
        self.0
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone());
        if let Ok(mut r) = self.0.lock() {
            r.push((*index, outcome));
        }
    }
}

pub struct Publisher {
    producer: BaseProducer<Reports>,
    topic: String,
    max_bytes: usize,
    store: Box<dyn Store>,
    stats: Arc<Stats>,
    clock: Arc<dyn Clock>,
}

impl Publisher {
    pub fn new(cfg: &KafkaConfig, store: Box<dyn Store>, stats: Arc<Stats>) -> KafkaResult<Self> {
        // The client refuses locally what Kafka's default broker limit (about 1 MB) would
        // refuse; a larger `dlq_max_bytes` raises it, leaving room for the headers.
        let limit = (cfg.dlq_max_bytes + 64 * 1024).max(1_000_000);
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.max.bytes", limit.to_string())
            // Every send is settled (taken or failed) before the set's outcome is recorded: a
            // letter still queued in the client after the flush would be sent again later.
            .set(
                "message.timeout.ms",
                (FLUSH.as_millis() as u64 - 2000).to_string(),
            )
            .create_with_context(Reports::default())?;
        Ok(Publisher {
            producer,
            topic: cfg.dlq_topic.clone(),
            max_bytes: cfg.dlq_max_bytes,
            store,
            stats,
            clock: crate::clock::system(),
        })
    }

    /// Reads the time from `clock`.
    pub fn clocked(mut self, clock: Arc<dyn Clock>) -> Publisher {
        self.clock = clock;
        self
    }

    /// Publishes until `stop`, woken by `bell` when the engine recorded dead letters.
    pub fn run(mut self, bell: Receiver<()>, stop: &Shutdown) {
        let mut backoff = Backoff::default();
        while !stop.is_triggered() {
            let wait = match self.round() {
                Round::Idle => {
                    backoff = Backoff::default();
                    self.stats.health.recovered(component::DEAD_LETTERS);
                    match bell.recv_timeout(IDLE) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                Round::Published => {
                    backoff = Backoff::default();
                    self.stats.health.recovered(component::DEAD_LETTERS);
                    continue;
                }
                Round::Failed(error) => {
                    let wait = backoff.wait();
                    self.stats
                        .health
                        .failing(component::DEAD_LETTERS, &error, wait);
                    wait
                }
            };
            stop.wait_timeout(wait);
        }
        self.producer.flush(Duration::from_secs(1)).ok();
    }

    /// Claims, sends and records one set.
    fn round(&mut self) -> Round {
        let now = self.clock.now();
        let lease = chrono::Duration::seconds(LEASE_SECS);
        let claimed = match self.store.claim_dead_letters(now, CLAIM, lease) {
            Ok(c) if c.is_empty() => return Round::Idle,
            Ok(c) => c,
            Err(e) => return Round::Failed(format!("reading dead letters from the store: {e}")),
        };
        let outcomes = self.publish(&claimed);
        let failed = outcomes.iter().find_map(|(_, o)| match o {
            Published::Retry(e) => Some(format!("dead-letter topic {}: {e}", self.topic)),
            _ => None,
        });
        for (_, o) in &outcomes {
            let outcome = match o {
                Published::Whole => "whole",
                Published::Truncated => "truncated",
                Published::Retry(_) => "retry",
                Published::Refused(_) => "refused",
            };
            self.stats
                .metrics
                .dead_letters_published
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
        }
        let taken = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Published::Whole | Published::Truncated))
            .count();
        if taken > 0 {
            tracing::info!(published = taken, topic = %self.topic, "dead letters published");
        }
        if let Err(e) = self.store.finish_dead_letters(self.clock.now(), &outcomes) {
            // Unrecorded, they are claimed and published again when the lease ends: at least
            // once, never lost.
            return Round::Failed(format!("recording published dead letters: {e}"));
        }
        match failed {
            Some(e) => Round::Failed(e),
            None => Round::Published,
        }
    }

    /// Sends every claimed letter; those refused as too large once more, cut short.
    fn publish(&self, letters: &[StoredDeadLetter]) -> Vec<(i64, Published)> {
        let whole = self.send_all(letters, false);
        let oversized: Vec<usize> = (0..letters.len())
            .filter(|i| matches!(&whole[*i], Err(e) if too_large(e)))
            .collect();
        let cut: Vec<StoredDeadLetter> = oversized.iter().map(|i| letters[*i].clone()).collect();
        let mut cut_results = self.send_all(&cut, true).into_iter();
        let mut out = Vec::with_capacity(letters.len());
        for (i, (d, result)) in letters.iter().zip(whole).enumerate() {
            let outcome = match result {
                Ok(()) => Published::Whole,
                Err(_) if oversized.contains(&i) => match cut_results.next() {
                    Some(Ok(())) => Published::Truncated,
                    Some(Err(e)) if too_large(&e) || refused(&e) => Published::Refused(format!(
                        "refused even with its value cut to {} bytes: {e}",
                        self.max_bytes
                    )),
                    Some(Err(e)) => Published::Retry(e.to_string()),
                    None => Published::Retry("not sent".into()),
                },
                Err(e) if refused(&e) => Published::Refused(e.to_string()),
                Err(e) => Published::Retry(e.to_string()),
            };
            out.push((d.id, outcome));
        }
        out
    }

    /// Sends `letters` (their values cut to `max_bytes` when `cut`) and waits for the broker;
    /// each letter's result, in order.
    fn send_all(&self, letters: &[StoredDeadLetter], cut: bool) -> Vec<KafkaResult<()>> {
        let mut results: Vec<Option<KafkaResult<()>>> = vec![None; letters.len()];
        if let Ok(mut r) = self.producer.context().0.lock() {
            r.clear();
        }
        for (i, d) in letters.iter().enumerate() {
            results[i] = self.send(i, d, cut).err().map(Err);
        }
        let flushed = self.producer.flush(FLUSH);
        if let Ok(mut reports) = self.producer.context().0.lock() {
            for (i, r) in reports.drain(..) {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(r);
                }
            }
        }
        results
            .into_iter()
            .map(|r| match r {
                Some(r) => r,
                None => Err(flushed
                    .clone()
                    .err()
                    .unwrap_or(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut))),
            })
            .collect()
    }

    fn send(&self, index: usize, d: &StoredDeadLetter, cut: bool) -> KafkaResult<()> {
        let l = &d.letter;
        let value: &[u8] = if cut {
            &l.value[..l.value.len().min(self.max_bytes)]
        } else {
            &l.value
        };
        let mut record: BaseRecord<'_, [u8], [u8], Box<usize>> =
            BaseRecord::with_opaque_to(&self.topic, Box::new(index))
                .headers(headers(d, cut))
                .payload(value);
        if let Some(k) = &l.key {
            record = record.key(k);
        }
        send_waiting(&self.producer, record)
    }
}

/// Queues `record`, serving the producer's callbacks while its queue is full: the one way
/// dead letters are produced, by the publisher and by `aftercare dead-letters replay`.
pub fn send_waiting<C: ProducerContext>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) -> KafkaResult<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(10));
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// A dead letter's headers: the original message's, then ours (the reason, where it came
/// from, its id, and whether its value was `cut` to the topic's limit).
fn headers(d: &StoredDeadLetter, cut: bool) -> OwnedHeaders {
    let l = &d.letter;
    let (partition, offset, size, id) = (
        l.partition.to_string(),
        l.offset.to_string(),
        l.value.len().to_string(),
        d.id.to_string(),
    );
    let mut headers = OwnedHeaders::new_with_capacity(l.headers.len() + 7);
    for (k, v) in &l.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let mut ours = vec![
        ("aftercare.error", l.reason.as_str()),
        ("aftercare.source.topic", l.topic.as_str()),
        ("aftercare.source.partition", partition.as_str()),
        ("aftercare.source.offset", offset.as_str()),
        ("aftercare.dead_letter.id", id.as_str()),
    ];
    if cut {
        ours.push(("aftercare.truncated", "true"));
        ours.push(("aftercare.original.size", size.as_str()));
    }
    for (k, v) in ours {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    headers
}

enum Round {
    Idle,
    Published,
    Failed(String),
}

/// The broker or the client refused the record for its size.
fn too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

/// The broker refused the record itself, for good.
fn refused(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::InvalidRecord | RDKafkaErrorCode::InvalidMessage)
    )
}
