//! `aftercare run`: Kafka in, the engine, the durable store, the scheduler, the outbox.
//!
//! A thread per job (and **sync**, where commits leave syncing to `run`, as on SQLite):
//! - **poll**: fetches from Kafka, batches, stores offsets of committed work ([`kafka`]);
//! - **engine**: applies batches and wakes due customers, one store transaction each
//!   ([`ingest`], [`apply`]); bad messages become dead letters in the same transaction. It
//!   writes most customer state; the outbox (bounces), the HTTP pages (preferences) and the
//!   admin API (pauses, erasures) write some too, each through the store's transactions and
//!   a revision every write changes (see [`crate::store::record`]);
//! - **dead-letters**: publishes recorded dead letters to `kafka.dlq_topic` ([`deadletters`]);
//! - **outbox**: renders and sends queued emails ([`outbox`]);
//! - **http**: unsubscribe and preferences pages ([`http`]); probes, `/metrics`, the admin API
//!   and the dashboard ([`admin`]);
//! - **figures**: recomputes the store-backed gauges and retention figures ([`figures`]);
//! - **watch**: hot reload of the sequences folder ([`reload`]).
//!
//! Shutdown (SIGTERM/SIGINT): the poll thread stops fetching, the engine finishes its batch and
//! acks it, offsets are stored and committed asynchronously, threads exit; bounded by a grace
//! period so the process is gone within 10 s even with the broker down.

pub mod admin;
pub mod apply;
pub mod deadletters;
pub mod error;
pub mod figures;
pub mod health;
pub mod http;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod reload;
pub mod reorder;
pub mod shutdown;
pub mod trace;
pub mod versions;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Notify;

use crate::config::{Config, Transport as TransportKind};
use crate::engine::{Engine, Policy};
use crate::mail::Composer;
use crate::mail::token::Signer;
use crate::mail::transport::{FileTransport, Plan};
use crate::sequence::{Catalog, Sequence};
use crate::store::{Store, VersionRecord};
use apply::Applier;
pub use error::{StartError, StartResult};
use kafka::{Ack, Batch};
pub use shutdown::{Shutdown, Worker};

/// Counters the service keeps: logged on exit; the metrics are served at `/metrics`.
pub struct Stats {
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_letters: AtomicU64,
    pub decisions: AtomicU64,
    pub wakeups: AtomicU64,
    pub batches: AtomicU64,
    pub metrics: Arc<metrics::Metrics>,
    /// Where the HTTP server listens, once bound (`http.listen` may ask for port 0).
    pub http_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// What keeps the service from its work right now (`/readyz`).
    pub health: Arc<health::Health>,
}

impl Stats {
    fn log_stopped(&self) {
        tracing::info!(
            events = self.events.load(Ordering::Relaxed),
            duplicates = self.duplicates.load(Ordering::Relaxed),
            dead_letters = self.dead_letters.load(Ordering::Relaxed),
            decisions = self.decisions.load(Ordering::Relaxed),
            "stopped"
        );
    }
}

impl Default for Stats {
    fn default() -> Stats {
        let metrics = Arc::new(metrics::Metrics::default());
        Stats {
            events: AtomicU64::default(),
            duplicates: AtomicU64::default(),
            dead_letters: AtomicU64::default(),
            decisions: AtomicU64::default(),
            wakeups: AtomicU64::default(),
            batches: AtomicU64::default(),
            health: Arc::new(health::Health::new(metrics.clone())),
            metrics,
            http_addr: std::sync::OnceLock::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Decide everything, send nothing: emails are recorded as they would have been sent.
    pub dry_run: bool,
}

/// How long shutdown may take before threads are abandoned.
pub const GRACE: Duration = Duration::from_secs(8);

/// How often processed-event keys older than `store.dedupe_retention`, and timeline lines
/// older than `store.timeline_retention`, are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The watch thread's stack: as large as a main thread's (8 MiB), with room to spare.
const WATCH_STACK: usize = 16 << 20;

/// Wake-ups per transaction.
pub const WAKE_BATCH: usize = 256;

/// Runs until `stop` is triggered, counting into `stats`: the workers, each spawned from the
/// same `Parts`, then stopped in stages.
pub fn run(config: Config, options: Options, stop: Shutdown, stats: Arc<Stats>) -> StartResult<()> {
    let parts = Parts::new(config, stats)?;
    // Held until `run` returns: one `run` per SQLite file.
    let (_writer, mut store) = parts.open_store()?;
    // Today's reorder intervals before the first order is applied; the figures thread keeps
    // them up.
    let mut daily = reorder::Daily::new(parts.reorder.clone());
    daily.refresh(&mut *store, &parts.catalog, parts.clock.now());
    let consumer = Arc::new(
        kafka::consumer(&parts.config.kafka, parts.stats.metrics.clone())
            .map_err(StartError::kafka("creating the Kafka consumer"))?,
    );
    let publisher = parts.publisher()?;
    let (bell, rung) = mpsc::channel::<()>();
    // A batch is handed over when the engine is `idle`; until then the poll thread keeps
    // adding to it. Under load batches grow (fewer, larger commits: group commit).
    let (batch_tx, batch_rx) = mpsc::sync_channel::<Batch>(1);
    let idle = Arc::new(AtomicBool::new(true));
    let (ack_tx, ack_rx) = mpsc::channel::<Ack>();
    let (engine_acks, sync) = spawn_sync(&mut *store, ack_tx, &stop)?;
    let mail_wake = Arc::new(Notify::new());
    let sender = parts.sender(options, &mail_wake)?;
    let signer = sender.composer.signer.clone();
    let http = parts.spawn_http(&consumer, &signer)?;
    let links = EngineLinks {
        dead_letters: bell,
        batches: batch_rx,
        acks: engine_acks,
        idle: idle.clone(),
        mail_wake: mail_wake.clone(),
    };
    let engine = parts.spawn_engine(store, signer, links)?;
    let side = Shutdown::new();
    let dead_letters = {
        let side = side.clone();
        Worker::spawn("dead-letters", move || publisher.run(rung, &side))?
    };
    let figures = parts.spawn_figures(&side, daily)?;
    let watch = parts.spawn_watch(&side)?;
    let poll = parts.spawn_poll(&consumer, batch_tx, ack_rx, idle, &stop)?;
    let outbox = Stage::spawn("outbox", move |stop| sender.run(stop))?;
    tracing::info!(
        sequences = parts.catalog.sequences().len(),
        dry_run = options.dry_run,
        "aftercare running"
    );

    stop.wait();
    tracing::info!("shutting down");
    Running {
        poll,
        engine,
        sync,
        outbox,
        http,
        side,
        figures,
        watch,
        dead_letters,
    }
    .stop();
    // Dropping the consumer closes it; with the broker down that can take long, so it happens
    // on a thread nobody waits for.
    std::thread::spawn(move || drop(consumer));
    parts.stats.log_stopped();
    Ok(())
}

/// `run`'s workers, to stop in stages within [`GRACE`].
struct Running {
    poll: Worker,
    engine: Stage,
    sync: Option<Worker>,
    outbox: Stage,
    http: Stage,
    /// The signal of the workers stopped last, together.
    side: Shutdown,
    figures: Worker,
    watch: Option<Worker>,
    dead_letters: Worker,
}

impl Running {
    /// The poll thread returns once the engine has acked what it was handed (or the grace ran
    /// out); then the engine, which sees its channel close, the sync, the outbox, the HTTP
    /// server, and the rest.
    fn stop(self) {
        let deadline = Instant::now() + GRACE;
        self.poll.stop_by(deadline);
        self.engine.stop_by(deadline);
        if let Some(sync) = self.sync {
            sync.stop_by(deadline);
        }
        self.outbox.stop_by(deadline);
        self.http.stop_by(deadline);
        self.side.trigger();
        if !self
            .figures
            .join_until((Instant::now() + FIGURES_WAIT).min(deadline))
        {
            tracing::debug!("figures scan still running; it ends with the process");
        }
        if let Some(w) = self.watch {
            w.stop_by(deadline);
        }
        self.dead_letters.stop_by(deadline);
    }
}

/// What `run`'s workers are built from: the config and its checked settings, the catalog
/// (and its hot reloads), the clock and the counters.
struct Parts {
    config: Config,
    policy: Policy,
    delivery: crate::config::Delivery,
    retention: crate::config::Retention,
    intervals: crate::config::Intervals,
    limits: crate::sequence::Limits,
    /// What the config gives the sequences, checked again on every reload.
    fit: reload::ConfigFit,
    /// The reorder intervals the engine reads (`after: auto`).
    reorder: Arc<crate::engine::intervals::Intervals>,
    catalog: Arc<Catalog>,
    live: Arc<reload::Live>,
    /// The one clock every worker reads.
    clock: Arc<dyn crate::clock::Clock>,
    stats: Arc<Stats>,
    /// The retention report the figures thread writes and the HTTP side serves.
    report: figures::Shared,
}

impl Parts {
    fn new(config: Config, stats: Arc<Stats>) -> StartResult<Parts> {
        let settings = config.settings().map_err(|p| StartError::settings(&p))?;
        // Every post is signed: the other commands read the config without the secrets,
        // `run` needs them all.
        let unsigned = crate::webhook::missing_secrets(&settings.webhooks);
        if !unsigned.is_empty() {
            return Err(StartError::settings(&unsigned));
        }
        let catalog = Arc::new(load_catalog_with(&config.sequences.dir, &settings.limits)?);
        let fit = reload::ConfigFit {
            endpoints: settings.webhooks,
            coupon_keyed: settings.policy.coupon_key.is_some(),
        };
        let refused = fit.refusals(&catalog);
        if !refused.is_empty() {
            for d in &refused {
                tracing::error!("{d}");
            }
            return Err(StartError::Sequences {
                dir: config.sequences.dir.display().to_string(),
                count: refused.len(),
            });
        }
        stats
            .metrics
            .sequences_loaded
            .set(catalog.sequences().len() as i64);
        Ok(Parts {
            policy: settings.policy,
            delivery: settings.delivery,
            retention: settings.retention,
            intervals: settings.intervals,
            limits: settings.limits,
            fit,
            reorder: Arc::default(),
            live: Arc::new(reload::Live::new(catalog.clone())),
            catalog,
            clock: crate::clock::system(),
            stats,
            report: Arc::default(),
            config,
        })
    }

    /// The dead-letter producer, on a store connection of its own.
    fn publisher(&self) -> StartResult<deadletters::Publisher> {
        Ok(deadletters::Publisher::new(
            &self.config.kafka,
            self.store("opening the store for dead letters")?,
            self.stats.clone(),
        )
        .map_err(StartError::kafka("creating the dead-letter producer"))?
        .clocked(self.clock.clone()))
    }

    /// A store connection of its own for a worker.
    fn store(&self, what: &'static str) -> StartResult<Box<dyn Store>> {
        crate::store::open_small(&self.config.store.url).map_err(StartError::store(what))
    }

    /// The store the engine writes, with the lock that keeps a SQLite file to one `run`, and
    /// the versions of the sequences loaded recorded.
    fn open_store(
        &self,
    ) -> StartResult<(Option<crate::store::sqlite::WriterLock>, Box<dyn Store>)> {
        let url = &self.config.store.url;
        let writer =
            crate::store::lock_writer(url).map_err(StartError::store("locking the store"))?;
        let mut store = crate::store::open(url).map_err(StartError::store("opening the store"))?;
        store
            .save_versions(&versions_of(&self.catalog))
            .map_err(StartError::store("recording sequence versions"))?;
        Ok((writer, store))
    }

    /// The engine thread on `store`, keeping erased addresses as hashes keyed by `signer`.
    fn spawn_engine(
        &self,
        store: Box<dyn Store>,
        signer: Signer,
        links: EngineLinks,
    ) -> StartResult<Stage> {
        let engine = EngineLoop {
            store,
            applier: self
                .applier()
                .metered(self.stats.metrics.clone())
                .signing(signer),
            links,
            stats: self.stats.clone(),
            retention: self.retention,
            live: self.live.clone(),
        };
        Stage::spawn("engine", move |stop| engine.run(stop))
    }

    /// The poll thread: batches to the engine, offsets stored as it acks them.
    fn spawn_poll(
        &self,
        consumer: &Arc<kafka::KafkaConsumer>,
        batches: mpsc::SyncSender<Batch>,
        acks: Receiver<Ack>,
        idle: Arc<AtomicBool>,
        stop: &Shutdown,
    ) -> StartResult<Worker> {
        let (consumer, stop) = (consumer.clone(), stop.clone());
        let (max_bytes, limit) = (
            self.config.kafka.max_event_bytes,
            kafka::BufferLimit::for_config(&self.config.kafka),
        );
        Worker::spawn("kafka-poll", move || {
            let poller = kafka::Poller {
                consumer: &consumer,
                batches,
                acks,
                idle: &idle,
                max_bytes,
                limit,
            };
            poller.run(&stop, GRACE)
        })
    }

    /// An engine on the catalog loaded at start, on the service's clock.
    fn applier(&self) -> Applier {
        let engine = Engine::new(self.catalog.clone(), self.policy.clone());
        Applier::new(engine.with_intervals(self.reorder.clone())).clocked(self.clock.clone())
    }

    /// The outbox worker, woken by `wake` when the engine queues emails.
    fn sender(&self, options: Options, wake: &Arc<Notify>) -> StartResult<outbox::Sender> {
        let mut sender = outbox::Sender::new(
            &self.config,
            self.delivery.clone(),
            self.store("opening the store for the outbox")?,
            Arc::new(Engine::new(self.catalog.clone(), self.policy.clone())),
        )?;
        sender.dry_run = options.dry_run;
        sender.wake = wake.clone();
        sender.observe = outbox::Observe {
            metrics: self.stats.metrics.clone(),
            live: Some(self.live.clone()),
            health: Some(self.stats.health.clone()),
        };
        sender.clock = self.clock.clone();
        Ok(sender)
    }

    /// The unsubscribe and preferences pages, probes, metrics and the admin API, on a
    /// listener bound now (a taken port fails the start).
    fn spawn_http(
        &self,
        consumer: &Arc<kafka::KafkaConsumer>,
        signer: &Signer,
    ) -> StartResult<Stage> {
        let http = &self.config.http;
        let listener = std::net::TcpListener::bind(&http.listen).map_err(StartError::io(
            format!("config error: http.listen {}", http.listen),
        ))?;
        let socket = || StartError::io(format!("setting up the listener on {}", http.listen));
        listener.set_nonblocking(true).map_err(socket())?;
        let bound = listener.local_addr().map_err(socket())?;
        let _ = self.stats.http_addr.set(bound);
        tracing::info!(listen = %bound, "http listening");
        let broker: admin::BrokerCheck = {
            let consumer = consumer.clone();
            Arc::new(move || {
                use rdkafka::consumer::Consumer as _;
                consumer
                    .fetch_metadata(None, Duration::from_secs(2))
                    .map(|_| ())
            })
        };
        let web = Arc::new(http::Web {
            signer: signer.clone(),
            categories: marketing_categories(&self.catalog),
            apply: std::sync::Mutex::new((
                self.store("opening the store for the http pages")?,
                self.applier().signing(signer.clone()),
            )),
            ops: admin::Ops {
                token: self.config.secrets.admin_token.clone(),
                stats: self.stats.clone(),
                live: Some(self.live.clone()),
                seen: AtomicU64::new(self.live.generation()),
                report: self.report.clone(),
                broker: Some(broker),
            },
        });
        Stage::spawn("http", move |stop| {
            if let Err(e) = serve_http(listener, web, stop.clone()) {
                tracing::error!(error = %e, "http server stopped");
            }
        })
    }

    /// Recomputes the store-backed figures every `http.figures_refresh` until `stop`, and
    /// the reorder intervals when a day starts.
    fn spawn_figures(&self, stop: &Shutdown, mut daily: reorder::Daily) -> StartResult<Worker> {
        let mut store = self.store("opening the store for the figures")?;
        let (clock, stats, live, report) = (
            self.clock.clone(),
            self.stats.clone(),
            self.live.clone(),
            self.report.clone(),
        );
        let (every, window) = (self.intervals.figures_refresh, self.intervals.nps_window);
        let window_text = self.config.http.nps_window.clone();
        let stop = stop.clone();
        Worker::spawn("figures", move || {
            loop {
                let now = clock.now();
                refresh_figures(
                    &mut *store,
                    &stats,
                    &live,
                    &report,
                    window,
                    &window_text,
                    now,
                );
                daily.refresh(&mut *store, &live.current(), now);
                if stop.wait_timeout(every) {
                    break;
                }
            }
            drop(store);
        })
    }

    /// The hot reload of the sequences folder until `stop`, when `sequences.watch` is on.
    fn spawn_watch(&self, stop: &Shutdown) -> StartResult<Option<Worker>> {
        if !self.config.sequences.watch {
            return Ok(None);
        }
        let mut store = self.store("opening the store for the reloads")?;
        let (stop, metrics, live) = (stop.clone(), self.stats.metrics.clone(), self.live.clone());
        let (dir, every, limits, fit) = (
            self.config.sequences.dir.clone(),
            self.intervals.watch,
            self.limits,
            self.fit.clone(),
        );
        // The same stack as the main thread that loaded the folder at start-up (and as
        // `validate`): a file that loads there loads here.
        let builder = std::thread::Builder::new()
            .name("watch".into())
            .stack_size(WATCH_STACK);
        Ok(Some(Worker::spawn_with(builder, "watch", move || {
            let watcher = reload::Watcher {
                dir: &dir,
                every,
                limits: &limits,
                fit: &fit,
                live: &live,
                store: &mut *store,
                metrics: &metrics,
            };
            watcher.run(&stop);
            drop(store);
        })?))
    }
}

/// A worker with a stop signal of its own: stopped, and joined, as one stage of the
/// shutdown.
struct Stage {
    stop: Shutdown,
    worker: Worker,
}

impl Stage {
    fn spawn(name: &'static str, f: impl FnOnce(&Shutdown) + Send + 'static) -> StartResult<Stage> {
        let stop = Shutdown::new();
        let signal = stop.clone();
        let worker = Worker::spawn(name, move || f(&signal))?;
        Ok(Stage { stop, worker })
    }

    fn stop_by(self, deadline: Instant) {
        self.stop.trigger();
        self.worker.stop_by(deadline);
    }
}

/// Offsets are stored only once a batch is durable. Where commits do not sync (SQLite), a
/// thread of its own syncs and then passes the acks on, while the engine goes on: the sender
/// the engine acks into, and that thread.
fn spawn_sync(
    store: &mut dyn Store,
    acks: Sender<Ack>,
    stop: &Shutdown,
) -> StartResult<(Sender<Ack>, Option<Worker>)> {
    Ok(
        match store
            .defer_sync()
            .map_err(StartError::store("opening the store"))?
        {
            Some(sync) => {
                let (tx, rx) = mpsc::channel::<Ack>();
                let stop = stop.clone();
                let worker = Worker::spawn("sync", move || forward_durable(rx, acks, sync, &stop))?;
                (tx, Some(worker))
            }
            None => (acks, None),
        },
    )
}

/// Serves `web` on `listener` until `stop`, on a runtime of its own.
fn serve_http(
    listener: std::net::TcpListener,
    web: Arc<http::Web>,
    stop: Shutdown,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handlers = web.clone();
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        http::serve(listener, handlers, async move { stop.triggered().await }).await
    });
    // The last handle on the store is dropped here, outside the runtime: the PostgreSQL
    // client blocks on a runtime of its own when it closes.
    drop(rt);
    drop(web);
    served
}

/// How long shutdown waits for the figures thread: it only reads, and a scan of a large store
/// (over 8 s at 1M journeys) is left to end with the process rather than hold the exit (the
/// consumer, no longer polled, would be dropped from its group meanwhile).
const FIGURES_WAIT: Duration = Duration::from_millis(300);

/// Loads the sequences with the default limits; refuses to start on any error (a running
/// engine keeps the last good version, but there is none at start-up).
pub fn load_catalog(dir: &Path) -> StartResult<Catalog> {
    load_catalog_with(dir, &crate::sequence::Limits::default())
}

/// As [`load_catalog`], with the config's limits.
pub fn load_catalog_with(dir: &Path, limits: &crate::sequence::Limits) -> StartResult<Catalog> {
    let (catalog, diags) = Catalog::load_with(dir, limits)?;
    if !diags.is_empty() {
        for d in &diags {
            tracing::error!("{d}");
        }
        return Err(StartError::Sequences {
            dir: dir.display().to_string(),
            count: diags.len(),
        });
    }
    Ok(catalog)
}

/// The version records of every current sequence, with the templates each renders.
pub fn versions_of(catalog: &Catalog) -> Vec<VersionRecord> {
    catalog
        .sequences()
        .iter()
        .map(|s: &Arc<Sequence>| VersionRecord {
            name: s.name.to_string(),
            version: s.version.to_string(),
            path: s.path.clone(),
            source: s.source.to_string(),
            templates: s.templates.files_used(s.email_templates()),
        })
        .collect()
}

/// The engine thread: batches as they come, wake-ups when due, both retried until they commit.
struct EngineLoop {
    store: Box<dyn Store>,
    applier: Applier,
    links: EngineLinks,
    stats: Arc<Stats>,
    retention: crate::config::Retention,
    live: Arc<reload::Live>,
}

/// What the engine thread hears from and tells the other workers.
struct EngineLinks {
    /// Rung when the engine recorded dead letters, for their publisher.
    dead_letters: Sender<()>,
    batches: Receiver<Batch>,
    acks: Sender<Ack>,
    /// Set while the engine waits for a batch (see [`kafka::Poller`]).
    idle: Arc<AtomicBool>,
    /// Notified when emails were queued, for the outbox.
    mail_wake: Arc<Notify>,
}

/// What the engine thread keeps between turns.
struct Turns {
    /// The catalog generation the applier runs.
    seen: u64,
    /// When the next customer is due, as last read from the store.
    next_due: Option<chrono::DateTime<Utc>>,
    due_checked: Instant,
    pruned_at: Option<Instant>,
}

impl EngineLoop {
    fn run(mut self, stop: &Shutdown) {
        let mut turns = Turns {
            seen: self.live.generation(),
            next_due: None,
            due_checked: Instant::now() - Duration::from_secs(1),
            pruned_at: None,
        };
        loop {
            // Sleep until the next due customer, but look again at least twice a second: other
            // instances may have changed what is due.
            let wait = turns
                .next_due
                .map(|d| (d - self.applier.now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::from_millis(500))
                .min(Duration::from_millis(500));
            self.links.idle.store(true, Ordering::Release);
            let received = self.links.batches.recv_timeout(wait);
            if let Some(catalog) = self.live.changed(&mut turns.seen) {
                self.applier.reload(catalog);
            }
            match received {
                Ok(batch) => {
                    if !self.apply(&batch, stop) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.wake_due(&mut turns);
            if turns.pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.prune();
                turns.pruned_at = Some(Instant::now());
            }
            if stop.is_triggered() {
                return;
            }
        }
    }

    /// Applies a batch until it commits, then acks it; false if the service stopped first.
    fn apply(&mut self, batch: &Batch, stop: &Shutdown) -> bool {
        let stats = &*self.stats;
        let dead_before = stats.dead_letters.load(Ordering::Relaxed);
        let mut ingest = ingest::Ingest {
            store: &mut *self.store,
            applier: &mut self.applier,
            stats,
            stop,
        };
        if ingest.batch(batch) == ingest::Settled::Stopped {
            return false;
        }
        self.links.mail_wake.notify_one();
        if stats.dead_letters.load(Ordering::Relaxed) != dead_before {
            let _ = self.links.dead_letters.send(());
        }
        fault_point_after_commit();
        let _ = self.links.acks.send(kafka::ack_of(&batch.messages));
        true
    }

    /// Wakes the customers due, when one is due or half a second has passed since the last
    /// look.
    fn wake_due(&mut self, turns: &mut Turns) {
        if turns.next_due.is_none_or(|d| d <= self.applier.now())
            || turns.due_checked.elapsed() >= Duration::from_millis(500)
        {
            if wake_all(&mut *self.store, &mut self.applier, &self.stats) {
                self.links.mail_wake.notify_one();
            }
            turns.next_due = self.store.next_due().unwrap_or(None);
            turns.due_checked = Instant::now();
        }
    }

    /// Forgets dedupe keys and timeline lines past their retention.
    fn prune(&mut self) {
        let now = self.applier.now();
        // Keys older than the window are forgotten: a redelivery older than that would apply
        // again, so the window must outlast any replay (topic retention).
        match self
            .store
            .prune_processed(now - self.retention.dedupe_keys())
        {
            Ok(n) => tracing::debug!(forgotten = n, "dedupe window pruned"),
            Err(e) => {
                tracing::warn!(error = %e, "pruning the dedupe window failed; retrying later")
            }
        }
        match self.store.prune_timeline(now - self.retention.timeline) {
            Ok(n) => tracing::debug!(
                deleted = n,
                "timeline lines past store.timeline_retention deleted"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "pruning the timeline failed; retrying later")
            }
        }
    }
}

/// Crash tests need the process to die after a transaction committed and before its offsets
/// are stored. With `AFTERCARE_FAULT=pause-after-commit:FILE` the engine writes FILE at that
/// point and stops there, for the test to kill it. Unset in production.
fn fault_point_after_commit() {
    static FAULT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let fault = FAULT.get_or_init(|| {
        std::env::var("AFTERCARE_FAULT")
            .ok()
            .and_then(|f| f.strip_prefix("pause-after-commit:").map(str::to_string))
    });
    if let Some(path) = fault {
        let _ = std::fs::write(path, b"committed, offsets not stored\n");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Passes acks on once what they acknowledge is on disk: one sync for all that are waiting,
/// then their acks in order. A failed sync stops the service and passes nothing more on
/// (after a failed fsync the kernel may have dropped the pages, and a retry can report
/// success regardless): what was not acked is read again, and deduplicated, after a restart.
fn forward_durable(
    acks: Receiver<Ack>,
    to: Sender<Ack>,
    mut sync: crate::store::Syncer,
    stop: &Shutdown,
) {
    while let Ok(first) = acks.recv() {
        let waiting: Vec<Ack> = std::iter::once(first).chain(acks.try_iter()).collect();
        if let Err(e) = sync() {
            tracing::error!(error = %e, "syncing the store to disk failed; stopping: events not yet acknowledged are read again after a restart");
            stop.trigger();
            return;
        }
        for ack in waiting {
            if to.send(ack).is_err() {
                return;
            }
        }
    }
}

/// Wakes every customer due now, a transaction per `WAKE_BATCH`; whether any email was
/// queued. A transient error waits for the next tick (shown by `/readyz` meanwhile); a
/// permanent one is a customer whose state the store refuses, found by waking one at a time
/// and parked (its wake-ups suspended, with an error) so that the others go on.
fn wake_all(store: &mut dyn Store, applier: &mut Applier, stats: &Stats) -> bool {
    let mut emails = false;
    // Shown by `/readyz` until a wake-up commits again; tried again on the next tick.
    let unavailable = |e: &crate::store::StoreError| {
        let wait = Duration::from_millis(500);
        stats
            .health
            .failing(health::component::WAKEUPS, &e.to_string(), wait);
    };
    let mut limit = WAKE_BATCH;
    loop {
        let now = applier.now();
        match applier.wake(store, now, limit) {
            Ok((n, decisions)) => {
                stats.health.recovered(health::component::WAKEUPS);
                stats.wakeups.fetch_add(n as u64, Ordering::Relaxed);
                stats.metrics.decided(&decisions);
                stats
                    .decisions
                    .fetch_add(decisions.len() as u64, Ordering::Relaxed);
                emails |= decisions.iter().any(|d| d.email.is_some());
                if n < limit {
                    return emails;
                }
                limit = WAKE_BATCH;
            }
            Err(e) if e.class() == crate::store::ErrorClass::Permanent && limit > 1 => {
                tracing::warn!(error = %e, "wake-ups refused; waking one customer at a time to find the one that causes it");
                limit = 1;
            }
            Err(e) if e.class() == crate::store::ErrorClass::Permanent => {
                match applier.park_first_due(store, now) {
                    Ok(Some(id)) => {
                        tracing::error!(customer_id = %crate::redact::text(&id), error = %e, "the store refuses this customer's state; its wake-ups are suspended")
                    }
                    Ok(None) => return emails,
                    Err(e) => {
                        unavailable(&e);
                        return emails;
                    }
                }
                limit = WAKE_BATCH;
            }
            Err(e) => {
                unavailable(&e);
                return emails;
            }
        }
    }
}

/// Recomputes the retention report and the store-backed gauges.
fn refresh_figures(
    store: &mut dyn Store,
    stats: &Stats,
    live: &reload::Live,
    report: &figures::Shared,
    nps_window: chrono::Duration,
    window_text: &str,
    now: chrono::DateTime<Utc>,
) {
    let started = Instant::now();
    match store.figures(now, now - nps_window) {
        Ok(f) => {
            tracing::debug!(
                took_ms = started.elapsed().as_millis() as u64,
                "figures refreshed"
            );
            let r = figures::report(&f, &live.current(), now, window_text);
            figures::export(&stats.metrics, &r, &f.journeys, &f.dead_letters);
            match report.write() {
                Ok(mut w) => *w = Arc::new(r),
                Err(p) => *p.into_inner() = Arc::new(r),
            }
        }
        Err(e) => tracing::warn!(error = %e, "figures not refreshed; retrying later"),
    }
}

/// The categories a customer can choose on the preferences page: every marketing category
/// of the loaded sequences and their steps.
pub fn marketing_categories(catalog: &Catalog) -> Vec<String> {
    let mut out: Vec<String> = catalog
        .sequences()
        .iter()
        .flat_map(|s| (0..s.steps.len()).map(move |i| s.step_category(i)))
        .filter(|c| !c.is_transactional())
        .map(|c| c.as_str().to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The development signing key, used only with the `file` transport when
/// `AFTERCARE_SIGNING_KEY` is unset: links work locally, and nothing real is mailed.
pub(crate) const DEV_SIGNING_KEY: &[u8] = b"aftercare-development-key-not-for-real-mail";

/// The key that signs unsubscribe links and keys erased addresses' hashes: required for real
/// mail, the development key otherwise.
pub fn signing_key(config: &Config) -> StartResult<Vec<u8>> {
    Ok(match (&config.secrets.signing_key, config.mail.transport) {
        (Some(k), _) if k.len() < crate::mail::token::Signer::MIN_KEY_BYTES => {
            return Err(StartError::Config(format!(
                "AFTERCARE_SIGNING_KEY is {} bytes; it must be at least {} (a shorter key can be \
                 guessed, and with it any unsubscribe link forged): make one with \
                 `openssl rand -base64 32`",
                k.len(),
                crate::mail::token::Signer::MIN_KEY_BYTES
            )));
        }
        (Some(k), _) => k.as_bytes().to_vec(),
        (None, TransportKind::File) => {
            tracing::warn!(
                "AFTERCARE_SIGNING_KEY is unset: unsubscribe links are signed with a development key"
            );
            DEV_SIGNING_KEY.to_vec()
        }
        (None, TransportKind::Smtp) => {
            return Err(StartError::Config(
                "AFTERCARE_SIGNING_KEY must be set to send real mail: it signs the unsubscribe links"
                    .into(),
            ));
        }
    })
}

/// The message composer for `mail.*` and `http.public_url`.
pub fn composer(config: &Config, delivery: &crate::config::Delivery) -> StartResult<Composer> {
    let key = signing_key(config)?;
    let dkim = match &config.mail.dkim {
        Some(d) => {
            let text = std::fs::read_to_string(&d.key_file).map_err(StartError::io(format!(
                "config error: mail.dkim.key_file {}",
                d.key_file.display()
            )))?;
            let domain = d
                .domain
                .clone()
                .unwrap_or_else(|| delivery.from.email.domain().to_string());
            Some(
                crate::mail::dkim_config(&d.selector, &domain, &text).map_err(|e| {
                    StartError::Config(format!("mail.dkim.key_file {}: {e}", d.key_file.display()))
                })?,
            )
        }
        None => None,
    };
    Ok(Composer {
        from: delivery.from.clone(),
        public_url: config.http.public_url.trim_end_matches('/').to_string(),
        signer: Signer::new(&key),
        unsubscribe_mailto: delivery.unsubscribe_mailto.clone(),
        dkim,
    })
}

/// The transport for `mail.transport`, checked.
pub fn transport(config: &Config, delivery: &crate::config::Delivery) -> StartResult<Plan> {
    Ok(match config.mail.transport {
        TransportKind::File => Plan::File(
            FileTransport::new(config.mail.file.dir.clone()).map_err(StartError::io(format!(
                "mail.file.dir {}",
                config.mail.file.dir.display()
            )))?,
        ),
        TransportKind::Smtp => Plan::Smtp(
            crate::mail::transport::smtp(
                &config.mail.smtp,
                config.secrets.smtp_password.as_deref(),
                delivery.send_timeout,
            )
            .map_err(StartError::Config)?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(partition: i32, offset: i64) -> Ack {
        vec![("orders".to_string(), partition, offset)]
    }

    #[test]
    fn acks_are_passed_on_in_order_only_after_one_sync_for_all_waiting() {
        let (ack_tx, ack_rx) = mpsc::channel();
        let (to_tx, to_rx) = mpsc::channel();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let sync: crate::store::Syncer = Box::new(move || {
            let _ = entered_tx.send(());
            let _ = release_rx.recv();
            Ok(())
        });
        ack_tx.send(ack(0, 5)).unwrap();
        ack_tx.send(ack(1, 7)).unwrap();
        let forwarder =
            std::thread::spawn(move || forward_durable(ack_rx, to_tx, sync, &Shutdown::new()));
        entered_rx.recv().unwrap();
        assert!(to_rx.try_recv().is_err(), "an ack went on before the sync");
        release_tx.send(()).unwrap();
        assert_eq!(to_rx.recv().unwrap(), ack(0, 5));
        assert_eq!(to_rx.recv().unwrap(), ack(1, 7));
        drop(ack_tx);
        forwarder.join().unwrap();
        assert_eq!(entered_rx.try_iter().count(), 0, "one sync for both");
    }

    #[test]
    fn a_failed_sync_passes_nothing_on_and_stops_the_service() {
        let (ack_tx, ack_rx) = mpsc::channel();
        let (to_tx, to_rx) = mpsc::channel::<Ack>();
        let sync: crate::store::Syncer = Box::new(|| Err(std::io::Error::other("EIO")));
        let stop = Shutdown::new();
        ack_tx.send(ack(0, 5)).unwrap();
        ack_tx.send(ack(0, 9)).unwrap();
        forward_durable(ack_rx, to_tx, sync, &stop);
        assert!(stop.is_triggered());
        assert_eq!(to_rx.try_iter().count(), 0);
    }
}
