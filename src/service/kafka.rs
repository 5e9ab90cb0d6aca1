//! Kafka in: a consumer group on `kafka.topics`, at-least-once by construction.
//!
//! - Automatic offset storing is off: an offset is stored only when the engine reports that
//!   the transaction holding the message's effects committed. librdkafka commits stored
//!   offsets on a timer and on rebalance (and we ask for one when partitions are revoked);
//!   commits are asynchronous, so a broker outage never blocks the loop.
//! - The polling thread only polls, batches and stores offsets. Processing runs on another
//!   thread, so `max.poll.interval.ms` is never exceeded by slow work; when that thread falls
//!   behind, the assigned partitions are paused instead of the poll loop blocking.
//! - Storing an offset for a partition revoked in the meantime fails with `__STATE`: the
//!   partition was lost, its new owner re-reads from the last commit and dedupe keeps the
//!   effects single. Logged, never fatal.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Kafka as KafkaConfig;
use crate::event::{Event, EventError};
use crate::service::metrics::{Metrics, PartitionLabels};

/// Messages handed to the engine together: many events per transaction (group commit),
/// each with its decoded event or the reason it is malformed.
pub struct Batch {
    pub messages: Vec<OwnedMessage>,
    pub decoded: Vec<Result<Arc<Event>, EventError>>,
    /// What the messages take in memory (see [`BufferLimit`]).
    pub bytes: usize,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            messages: Vec::with_capacity(MAX_BATCH),
            decoded: Vec::with_capacity(MAX_BATCH),
            bytes: 0,
        }
    }

    fn push(&mut self, m: OwnedMessage, decoded: Result<Arc<Event>, EventError>) {
        self.bytes += message_bytes(&m);
        self.messages.push(m);
        self.decoded.push(decoded);
    }

    /// Takes the first messages, as many as one batch may hold: at most `MAX_BATCH` and
    /// `max_bytes` (at least one).
    fn take_front(&mut self, max_bytes: usize) -> Batch {
        let mut bytes = 0;
        let mut n = 0;
        for m in self.messages.iter().take(MAX_BATCH) {
            let b = message_bytes(m);
            if n > 0 && bytes + b > max_bytes {
                break;
            }
            bytes += b;
            n += 1;
        }
        if n == self.messages.len() {
            return std::mem::replace(self, Batch::new());
        }
        let rest = Batch {
            messages: self.messages.split_off(n),
            decoded: self.decoded.split_off(n),
            bytes: self.bytes - bytes,
        };
        self.bytes = bytes;
        std::mem::replace(self, rest)
    }

    /// Puts `later` back after these messages.
    fn append(&mut self, mut later: Batch) {
        self.messages.append(&mut later.messages);
        self.decoded.append(&mut later.decoded);
        self.bytes += later.bytes;
    }
}

/// "These messages' effects are committed": per (topic, partition), the next offset to read.
pub type Ack = Vec<(String, i32, i64)>;

/// Batch limits: as many messages as arrive within `LINGER` or while the engine is busy, at
/// most `MAX_BATCH` (and [`BufferLimit::batch`] bytes); with `HIGH_WATER` messages (or
/// [`BufferLimit::buffered`] bytes) waiting, polling waits for the engine, and fetching
/// pauses if the engine takes longer than `PAUSE_AFTER`.
pub const MAX_BATCH: usize = 8192;
const HIGH_WATER: usize = 3 * MAX_BATCH;
const LINGER: Duration = Duration::from_millis(5);
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// How `kafka.buffer_bytes` is shared, a quarter each: librdkafka's queue of prefetched
/// messages, its fetch responses, the messages buffered here, and the batch the engine is
/// applying. Counting messages alone let 1,500 messages of 875 KB take 5.4 GB.
#[derive(Debug, Clone, Copy)]
pub struct BufferLimit {
    /// Most bytes buffered before polling waits for the engine.
    pub buffered: usize,
    /// Most bytes handed to the engine in one batch (at least one message).
    pub batch: usize,
}

impl BufferLimit {
    pub fn for_config(cfg: &KafkaConfig) -> BufferLimit {
        BufferLimit {
            buffered: cfg.buffer_bytes / 4,
            batch: cfg.buffer_bytes / 4,
        }
    }
}

/// What a message takes in memory: its key, value and headers.
fn message_bytes(m: &OwnedMessage) -> usize {
    let headers = m.headers().map_or(0, |h| {
        h.iter()
            .map(|h: Header<'_, &[u8]>| h.key.len() + h.value.map_or(0, <[u8]>::len))
            .sum()
    });
    m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len) + headers + 64
}

/// Reads an event from a message in either CloudEvents binding; messages over `max_bytes`
/// are refused unread.
pub fn decode(m: &OwnedMessage, max_bytes: usize) -> Result<Event, EventError> {
    let payload = m.payload().unwrap_or_default();
    if payload.len() > max_bytes {
        return Err(EventError::Oversized {
            size: payload.len(),
            max: max_bytes,
        });
    }
    let binary = m
        .headers()
        .is_some_and(|h| h.iter().any(|h| h.key == "ce_specversion"));
    if binary {
        let headers = m.headers().map(|h| {
            h.iter()
                .map(|h: Header<'_, &[u8]>| (h.key, h.value.unwrap_or_default()))
                .collect::<Vec<_>>()
        });
        return Event::from_binary(headers.unwrap_or_default(), payload);
    }
    if payload.is_empty() {
        return Err(EventError::NotJson("the message is empty".into()));
    }
    Event::from_structured(payload)
}

/// How often librdkafka reports statistics (consumer lag).
const STATS_INTERVAL_MS: &str = "2000";

/// Consumer callbacks: log commits, commit before partitions are taken away.
pub struct Context {
    pub lost: Arc<std::sync::atomic::AtomicU64>,
    /// Consumer lag per partition, from librdkafka's statistics.
    pub metrics: Arc<Metrics>,
}

impl ClientContext for Context {
    fn stats(&self, stats: rdkafka::Statistics) {
        let lag = &self.metrics.consumer_lag;
        lag.clear();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // -1 is librdkafka's internal partition; a lag of -1 is "not known yet".
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lag.get_or_create(&PartitionLabels {
                        topic: topic.clone(),
                        partition: partition.to_string(),
                    })
                    .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked; committing stored offsets"
            );
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
                // Nothing stored yet is the common, harmless case.
                tracing::debug!(error = %e, "commit on revoke");
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit failed; retried on the next one"),
        }
    }
}

pub type KafkaConsumer = BaseConsumer<Context>;

/// Builds the consumer and subscribes it.
pub fn consumer(cfg: &KafkaConfig, metrics: Arc<Metrics>) -> KafkaResult<KafkaConsumer> {
    let consumer: KafkaConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", cfg.max_poll_interval_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (cfg.session_timeout_ms / 3).max(500).to_string(),
        )
        .set("fetch.wait.max.ms", cfg.fetch_wait_ms.to_string())
        // A quarter of `buffer_bytes` each for the prefetch queue and a fetch response.
        .set(
            "queued.max.messages.kbytes",
            (cfg.buffer_bytes / 4 / 1024).max(1).to_string(),
        )
        .set(
            "fetch.max.bytes",
            (cfg.buffer_bytes / 4).max(1024).to_string(),
        )
        .set(
            "receive.message.max.bytes",
            (cfg.buffer_bytes / 4 + 1024 * 1024)
                .max(100_000_000)
                .to_string(),
        )
        // Lag per partition comes with librdkafka's statistics.
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .create_with_context(Context {
            lost: Arc::default(),
            metrics,
        })?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(consumer)
}

/// The poll thread: fetches, decodes and buffers messages, hands batches to the engine and
/// stores the offsets of what it acked.
///
/// Messages are decoded as they arrive and buffered; a batch (at most `MAX_BATCH`) is handed
/// over when the engine is `idle`, once the oldest buffered message is `LINGER` old or a full
/// batch is waiting. Under load the engine is rarely idle, so batches grow to `MAX_BATCH`
/// (group commit). With `HIGH_WATER` messages buffered, the loop stops taking messages from
/// librdkafka until the engine takes a batch: it does not pause the partitions, because
/// pausing purges librdkafka's prefetch and the refetch after the resume left the engine
/// waiting a quarter of the time (SQLite ingest 32k → 44k events/s without it). Not polling
/// is safe for a while (`max.poll.interval.ms` is seconds); if the engine is still busy after
/// `PAUSE_AFTER` (a store that is down, say), the partitions are paused so that polling, and
/// with it the group membership and rebalances, go on; they resume below `MAX_BATCH`.
pub struct Poller<'a> {
    pub consumer: &'a KafkaConsumer,
    /// Where batches go; at most one waits for the engine.
    pub batches: SyncSender<Batch>,
    /// The engine's acks of committed batches: their offsets may be stored.
    pub acks: Receiver<Ack>,
    /// Set by the engine while it waits for a batch.
    pub idle: &'a AtomicBool,
    /// The largest event accepted (`kafka.max_event_bytes`).
    pub max_bytes: usize,
    pub limit: BufferLimit,
}

/// What the poll thread holds between turns.
struct Buffered {
    batch: Batch,
    /// When the oldest message buffered arrived.
    first_at: Instant,
    paused: bool,
    /// Since when the buffer has been full with the engine busy.
    full_since: Option<Instant>,
    /// Batches handed out and not yet acked.
    outstanding: usize,
}

impl Poller<'_> {
    /// Polls until `stop`, then waits for everything handed out to be acked (or `grace` to
    /// run out) and commits once more, asynchronously.
    pub fn run(self, stop: &super::Shutdown, grace: Duration) {
        let mut held = Buffered {
            batch: Batch::new(),
            first_at: Instant::now(),
            paused: false,
            full_since: None,
            outstanding: 0,
        };
        while !stop.is_triggered() {
            self.take_acks(&mut held);
            let full =
                held.batch.messages.len() >= HIGH_WATER || held.batch.bytes >= self.limit.buffered;
            if self.wait_while_full(&mut held, full) {
                continue;
            }
            self.poll_one(&mut held, full);
            if self.ready(&held) && !self.hand_over(&mut held) {
                break;
            }
        }
        // Shutdown: stop fetching; what was fetched but not handed out is simply re-read later.
        self.finish(held.outstanding, grace);
    }

    /// Stores the offsets of every batch acked since last looked.
    fn take_acks(&self, held: &mut Buffered) {
        while let Ok(ack) = self.acks.try_recv() {
            held.outstanding = held.outstanding.saturating_sub(1);
            store(self.consumer, &ack);
        }
    }

    /// With the buffer full and the engine busy: waits a moment for its ack (true: poll
    /// nothing this turn), or, after [`PAUSE_AFTER`], pauses the partitions.
    fn wait_while_full(&self, held: &mut Buffered, full: bool) -> bool {
        if !full {
            held.full_since = None;
            return false;
        }
        if held.paused || self.idle.load(Ordering::Acquire) {
            return false;
        }
        if held.full_since.get_or_insert_with(Instant::now).elapsed() < PAUSE_AFTER {
            // Wait for the engine's commit (its ack), then for it to be idle.
            if let Ok(ack) = self.acks.recv_timeout(Duration::from_millis(1)) {
                held.outstanding = held.outstanding.saturating_sub(1);
                store(self.consumer, &ack);
            }
            return true;
        }
        set_paused(self.consumer, true);
        held.paused = true;
        false
    }

    /// Takes one message from librdkafka, decoded, unless the buffer is full. Paused, the
    /// poll still serves callbacks (rebalances) and keeps the group membership.
    fn poll_one(&self, held: &mut Buffered, full: bool) {
        if full && !held.paused {
            return;
        }
        let timeout = if held.batch.messages.is_empty() {
            100
        } else {
            1
        };
        match self.consumer.poll(Duration::from_millis(timeout)) {
            Some(Ok(m)) => {
                if held.batch.messages.is_empty() {
                    held.first_at = Instant::now();
                }
                let m = m.detach();
                // Microseconds a message, sizes bounded by `max_bytes`: the engine thread is
                // kept for the engine and the store.
                let decoded = decode(&m, self.max_bytes).map(Arc::new);
                held.batch.push(m, decoded);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
            None => {}
        }
    }

    /// A batch is waiting (full, or its oldest message lingered) and the engine is idle.
    fn ready(&self, held: &Buffered) -> bool {
        let n = held.batch.messages.len();
        let ready = n >= MAX_BATCH
            || held.batch.bytes >= self.limit.batch
            || (n > 0 && held.first_at.elapsed() >= LINGER);
        ready && self.idle.load(Ordering::Acquire)
    }

    /// Hands the front of the buffer to the engine, and resumes paused partitions once the
    /// buffer is below a batch. False when the engine is gone.
    fn hand_over(&self, held: &mut Buffered) -> bool {
        let batch = held.batch.take_front(self.limit.batch);
        if !held.batch.messages.is_empty() {
            held.first_at = Instant::now();
        }
        self.idle.store(false, Ordering::Release);
        match self.batches.try_send(batch) {
            Ok(()) => held.outstanding += 1,
            Err(TrySendError::Full(mut b)) => {
                // The engine was between batches after all: take them back, in order.
                b.append(std::mem::replace(&mut held.batch, Batch::new()));
                held.batch = b;
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
        if held.paused
            && held.batch.messages.len() < MAX_BATCH
            && held.batch.bytes < self.limit.batch
        {
            set_paused(self.consumer, false);
            held.paused = false;
        }
        true
    }

    /// Waits for the `outstanding` batches' acks until `grace` runs out, then commits
    /// asynchronously and lets the commit go out, without waiting on a broker that is down.
    fn finish(self, mut outstanding: usize, grace: Duration) {
        let Poller {
            consumer,
            batches,
            acks,
            ..
        } = self;
        drop(batches);
        let deadline = Instant::now() + grace;
        while outstanding > 0 && Instant::now() < deadline {
            match acks.recv_timeout(Duration::from_millis(50)) {
                Ok(ack) => {
                    outstanding -= 1;
                    store(consumer, &ack);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
            tracing::debug!(error = %e, "final commit");
        }
        let end = Instant::now()
            + Duration::from_millis(500).min(
                deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100),
            );
        while Instant::now() < end {
            consumer.poll(Duration::from_millis(20));
        }
    }
}

fn set_paused(consumer: &KafkaConsumer, pause: bool) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => tracing::debug!(pause, "partitions paused/resumed: the engine is behind"),
        Err(e) => tracing::warn!(error = %e, pause, "pause/resume failed"),
    }
}

/// Stores the next offsets of committed work, one partition at a time so a revoked one does
/// not keep the others from being stored.
fn store(consumer: &KafkaConsumer, ack: &Ack) {
    for (topic, partition, next) in ack {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*next))
            .is_err()
        {
            continue;
        }
        match consumer.store_offsets(&tpl) {
            Ok(()) => {}
            Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                consumer.context().lost.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    topic,
                    partition,
                    "partition lost before its offset was stored; its new owner re-reads it"
                );
            }
            Err(e) => tracing::warn!(topic, partition, error = %e, "storing offset failed"),
        }
    }
}

/// The highest offset per partition of a batch, as "next offset to read".
pub fn ack_of(messages: &[OwnedMessage]) -> Ack {
    let mut ack: Ack = Vec::new();
    for m in messages {
        match ack
            .iter_mut()
            .find(|(t, p, _)| t == m.topic() && *p == m.partition())
        {
            Some(entry) => entry.2 = entry.2.max(m.offset() + 1),
            None => ack.push((m.topic().to_string(), m.partition(), m.offset() + 1)),
        }
    }
    ack
}
