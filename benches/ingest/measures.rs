//! Each figure of the ingest bench, with its floor.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aftercare::config::Config;
use aftercare::engine::Decision;
use aftercare::engine::{Engine, Policy};
use aftercare::event::Event;
use aftercare::service::apply::Applier;
use aftercare::service::{self, Options, Stats};
use aftercare::store::{
    self, DeadLetter, DeadLetterQuery, Delivery, JourneyCount, Note, OutboxRow, Published, Store,
    StoreFigures, StoredCustomer, StoredDeadLetter, TimelineRow, Tx, VersionRecord,
};
use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use crate::common::service::wait_until;
use crate::harness::*;

/// Floor: consume every message of `orders` from the start and parse it; events/s.
pub(crate) fn floor_consume(brokers: &str, n: usize) -> f64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("floor-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&["orders"]).unwrap();
    let mut got = 0;
    let mut started: Option<Instant> = None;
    while got < n {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            started.get_or_insert_with(Instant::now);
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
            got += usize::from(v.is_object());
        }
    }
    (n - 1) as f64 / started.map_or(1.0, |s| s.elapsed().as_secs_f64())
}

/// Floor: one row per event, inserted in transactions of the service's batch size; rows/s.
pub(crate) fn floor_insert(url: &str, events: &[String]) -> f64 {
    let ids: Vec<String> = events
        .iter()
        .map(|e| {
            e[e.find("\"id\":\"").unwrap_or(0)..]
                .chars()
                .take(40)
                .collect()
        })
        .collect();
    let started = Instant::now();
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut conn = rusqlite::Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.execute_batch("CREATE TABLE floor (source TEXT, id TEXT, at INTEGER, PRIMARY KEY (source, id)) WITHOUT ROWID").unwrap();
        for chunk in ids.chunks(service::kafka::MAX_BATCH) {
            let tx = conn.transaction().unwrap();
            {
                let mut st = tx
                    .prepare_cached("INSERT INTO floor VALUES ('/s', ?1, 0)")
                    .unwrap();
                for (i, id) in chunk.iter().enumerate() {
                    st.execute([format!("{id}{i}")]).unwrap();
                }
            }
            tx.commit().unwrap();
        }
    } else {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        c.batch_execute(
            "CREATE TABLE floor (source TEXT, id TEXT, at BIGINT, PRIMARY KEY (source, id))",
        )
        .unwrap();
        for chunk in ids.chunks(service::kafka::MAX_BATCH) {
            let mut tx = c.transaction().unwrap();
            let chunk: Vec<String> = chunk
                .iter()
                .enumerate()
                .map(|(i, id)| format!("{id}{i}"))
                .collect();
            tx.execute(
                "INSERT INTO floor SELECT '/s', i, 0 FROM UNNEST($1::text[]) AS t(i)",
                &[&chunk],
            )
            .unwrap();
            tx.commit().unwrap();
        }
    }
    ids.len() as f64 / started.elapsed().as_secs_f64()
}

/// `aftercare run` in-process from the start of the topic; events/s from the first event
/// applied to the last (the group join is not counted).
pub(crate) fn ingest(brokers: &str, url: &str, group: &str, n: usize) -> f64 {
    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.into();
    cfg.kafka.group_id = group.into();
    cfg.kafka.session_timeout_ms = 6000;
    cfg.kafka.max_poll_interval_ms = 6000;
    cfg.store.url = url.into();
    cfg.sequences.dir = sequences();
    cfg.mail.file.dir = std::env::temp_dir().join(format!("ingest-mail-{group}"));
    cfg.http.listen = "127.0.0.1:0".into();
    let stop = aftercare::service::Shutdown::new();
    let stats = Arc::new(Stats::default());
    let (s, st) = (stop.clone(), stats.clone());
    let handle = std::thread::spawn(move || service::run(cfg, Options { dry_run: true }, s, st));
    let seen = || {
        stats.events.load(Ordering::Relaxed) as usize
            + stats.duplicates.load(Ordering::Relaxed) as usize
    };
    wait_until(120, "the first event applied", || seen() > 0);
    let (start_n, started, ticks) = (seen(), Instant::now(), machine_ticks());
    let names = ["engine", "kafka-poll", "outbox"];
    let before = names.map(thread_ticks);
    wait_until(600, "every event applied", || seen() >= n);
    let secs = started.elapsed().as_secs_f64();
    let rate = (n - start_n) as f64 / secs;
    let busy = machine_busy(ticks);
    // Ticks are 10 ms, so ticks per second are percent of a core.
    let used: Vec<String> = names
        .iter()
        .zip(before)
        .map(|(name, then)| format!("{name} {:.0}%", (thread_ticks(name) - then) as f64 / secs))
        .collect();
    stop.trigger();
    handle.join().unwrap().unwrap();
    // How much group commit there was: events per store transaction.
    let batches = stats.batches.load(Ordering::Relaxed).max(1);
    println!(
        "  ({group}: {} events in {batches} batches, {:.0} per batch; machine CPU {busy:.0}% busy; \
         threads' CPU: {})",
        seen(),
        seen() as f64 / batches as f64,
        used.join(", ")
    );
    rate
}

/// Two instances in one consumer group on one PostgreSQL store against one: events/s of each
/// setup (from the first event applied to the last, across both), and whether they decided the
/// same (customer, sequence, step, action) lines.
pub(crate) fn scale_out(brokers: &str, n: usize) -> (f64, f64, bool) {
    let one_url = pg_url("scale1");
    let one = ingest(brokers, &one_url, "scale-1", n);
    let two_url = pg_url("scale2");
    let start = |i: usize| {
        let mut cfg = Config::default();
        cfg.kafka.brokers = brokers.into();
        cfg.kafka.group_id = "scale-2".into();
        cfg.kafka.session_timeout_ms = 6000;
        cfg.kafka.max_poll_interval_ms = 6000;
        cfg.store.url = two_url.clone();
        cfg.sequences.dir = sequences();
        cfg.mail.file.dir = std::env::temp_dir().join(format!("scale-mail-{i}"));
        cfg.http.listen = "127.0.0.1:0".into();
        let stop = aftercare::service::Shutdown::new();
        let stats = Arc::new(Stats::default());
        let (s, st) = (stop.clone(), stats.clone());
        let handle =
            std::thread::spawn(move || service::run(cfg, Options { dry_run: true }, s, st));
        (stop, stats, handle)
    };
    let instances = [start(0), start(1)];
    let seen = || -> usize {
        instances
            .iter()
            .map(|(_, s, _)| {
                s.events.load(Ordering::Relaxed) as usize
                    + s.duplicates.load(Ordering::Relaxed) as usize
            })
            .sum()
    };
    wait_until(120, "the first event applied", || seen() > 0);
    let (start_n, started, ticks) = (seen(), Instant::now(), machine_ticks());
    wait_until(600, "every event applied", || seen() >= n);
    let two = (n - start_n) as f64 / started.elapsed().as_secs_f64();
    let busy = machine_busy(ticks);
    let shares: Vec<u64> = instances
        .iter()
        .map(|(_, s, _)| s.events.load(Ordering::Relaxed))
        .collect();
    println!("  (scale-2: events applied per instance {shares:?}; machine CPU {busy:.0}% busy)");
    for (stop, _, handle) in instances {
        stop.trigger();
        handle.join().unwrap().unwrap();
    }
    let decisions = |url: &str| -> Vec<String> {
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        c.query(
            "SELECT customer || ' ' || sequence || ' ' || COALESCE(step, '-') || ' ' || action \
             FROM timeline WHERE journey <> '-' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    (one, two, decisions(&one_url) == decisions(&two_url))
}

/// Wake-ups/s: `n` customers due now, fired in transactions of the service's size.
pub(crate) fn wakeups(url: &str, n: usize) -> f64 {
    let (catalog, _) = aftercare::sequence::Catalog::load(&sequences()).unwrap();
    let mut a = Applier::new(Engine::new(Arc::new(catalog), Policy::default()));
    let mut store = aftercare::store::open(url).unwrap();
    let t0 = chrono::Utc::now() - chrono::Duration::days(1);
    // One order each: fulfilment waits for shipping until t0 + 3 days.
    let events: Vec<Arc<Event>> = (0..n)
        .map(|i| {
            let e = serde_json::json!({"specversion": "1.0", "id": format!("w{i}"), "source": "/b", "type": "order.placed",
                "time": aftercare::time::rfc3339(t0), "subject": format!("w{i}"),
                "data": {"order_id": format!("o{i}"), "total": 1, "currency": "EUR", "items": [], "customer": {"email": format!("w{i}@example.com")}}});
            Arc::new(Event::from_structured(e.to_string().as_bytes()).unwrap())
        })
        .collect();
    for chunk in events.chunks(2000) {
        a.apply(&mut *store, chunk, t0).unwrap();
    }
    let later = t0 + chrono::Duration::days(4);
    let started = Instant::now();
    let mut fired = 0;
    loop {
        let (k, _) = a.wake(&mut *store, later, service::WAKE_BATCH).unwrap();
        fired += k;
        if k == 0 {
            break;
        }
    }
    fired as f64 / started.elapsed().as_secs_f64()
}

/// `aftercare run` (the release binary) on a store seeded with `journeys` journeys in flight:
/// it consumes `stream` from a topic of its own and wakes what is due; RSS (MiB) once it has
/// applied the whole stream.
pub(crate) fn rss(brokers: &str, url: &str, topic: &str, stream: &[String]) -> (f64, f64) {
    let dir = std::env::temp_dir().join(format!("aftercare-rss-{topic}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let before = count(url, "events processed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .args(["run", "--dry-run"])
        .current_dir(root())
        .env("AFTERCARE_KAFKA__BROKERS", brokers)
        .env("AFTERCARE_KAFKA__GROUP_ID", format!("rss-{topic}"))
        .env("AFTERCARE_KAFKA__TOPICS", topic)
        .env("AFTERCARE_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("AFTERCARE_KAFKA__MAX_POLL_INTERVAL_MS", "6000")
        .env("AFTERCARE_STORE__URL", url)
        .env("AFTERCARE_MAIL__FILE__DIR", dir.join("mail"))
        .env("AFTERCARE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("aftercare run");
    let sample = |field: &str| -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    publish_to(brokers, topic, stream);
    wait_until(300, "the stream applied", || {
        count(url, "events processed") >= before + stream.len() as i64
    });
    let (rss, peak) = (sample("VmRSS:"), sample("VmHWM:"));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    (rss, peak)
}

/// Scheduler lateness: `n` journeys in a SQLite store come due over `spread`, starting a few
/// seconds after `run` starts; each fires an email step. Lateness is the decision's time minus
/// the due time. Returns (p50, p99, max) in milliseconds.
pub(crate) fn lateness(brokers: &str, n: usize, spread: Duration) -> (f64, f64, f64) {
    let dir = std::env::temp_dir().join(format!("aftercare-late-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("seq/templates/t")).unwrap();
    std::fs::write(
        dir.join("seq/late.yaml"),
        "name: late\ncategory: transactional\ntrigger: { event: test.tick }\nsteps:\n  - id: s\n    wait: 5s\n    email: { template: t/a }\n",
    )
    .unwrap();
    std::fs::write(dir.join("seq/templates/t/a.subject.j2"), "A").unwrap();
    std::fs::write(dir.join("seq/templates/t/a.html.j2"), "<p>a</p>").unwrap();
    let url = format!("sqlite://{}", dir.join("late.db").display());
    let (catalog, _) = aftercare::sequence::Catalog::load(&dir.join("seq")).unwrap();
    let mut a = Applier::new(Engine::new(Arc::new(catalog), Policy::default()));
    let mut store = aftercare::store::open(&url).unwrap();
    // Due times from start + 8 s (seeding and the service's start fit before) over `spread`.
    let start = chrono::Utc::now() + chrono::Duration::seconds(8);
    let step = chrono::Duration::from_std(spread).unwrap() / n as i32;
    let due: Vec<chrono::DateTime<chrono::Utc>> = (0..n).map(|i| start + step * i as i32).collect();
    let events: Vec<Arc<Event>> = (0..n)
        .map(|i| {
            let e = serde_json::json!({"specversion": "1.0", "id": format!("l{i}"), "source": "/late", "type": "test.tick",
                "time": aftercare::time::rfc3339(due[i] - chrono::Duration::seconds(5)), "subject": format!("l{i}"),
                "data": {"customer": {"email": format!("l{i}@example.com")}}});
            Arc::new(Event::from_structured(e.to_string().as_bytes()).unwrap())
        })
        .collect();
    for chunk in events.chunks(2000) {
        a.apply(&mut *store, chunk, chrono::Utc::now()).unwrap();
    }
    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.into();
    cfg.kafka.group_id = "late".into();
    cfg.kafka.topics = vec!["late".into()];
    cfg.kafka.session_timeout_ms = 6000;
    cfg.kafka.max_poll_interval_ms = 6000;
    cfg.store.url = url.clone();
    cfg.sequences.dir = dir.join("seq");
    cfg.mail.file.dir = dir.join("mail");
    cfg.http.listen = "127.0.0.1:0".into();
    let stop = aftercare::service::Shutdown::new();
    let stats = Arc::new(Stats::default());
    let (s, st) = (stop.clone(), stats.clone());
    let handle = std::thread::spawn(move || service::run(cfg, Options { dry_run: true }, s, st));
    let fired = || -> Vec<(String, i64)> {
        let c = rusqlite::Connection::open(dir.join("late.db")).unwrap();
        let mut st = c
            .prepare("SELECT customer, at FROM timeline WHERE action = 'email'")
            .unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    wait_until(120, "every journey fired", || fired().len() >= n);
    stop.trigger();
    handle.join().unwrap().unwrap();
    let mut late: Vec<f64> = fired()
        .into_iter()
        .map(|(customer, at)| {
            let i: usize = customer[1..].parse().unwrap();
            (at - due[i].timestamp_micros()) as f64 / 1000.0
        })
        .collect();
    late.sort_by(f64::total_cmp);
    let pct = |p: f64| late[((late.len() as f64 * p) as usize).min(late.len() - 1)];
    (pct(0.5), pct(0.99), late[late.len() - 1])
}

/// What one batch asked of the store, to be asked again without the engine.
#[derive(Default)]
pub(crate) struct Asked {
    keys: Vec<(String, String)>,
    ids: Vec<String>,
    saved: Vec<StoredCustomer>,
    decisions: Vec<Decision>,
    notes: Vec<Note>,
}

/// A store that passes every transaction through and writes down what it was asked.
pub(crate) struct Recording {
    inner: Box<dyn Store>,
    asked: Vec<Asked>,
}

pub(crate) struct RecordingTx<'a> {
    inner: Box<dyn Tx + 'a>,
    asked: &'a mut Vec<Asked>,
    this: Asked,
}

impl Tx for RecordingTx<'_> {
    fn first_sight(
        &mut self,
        keys: &[(&str, &str)],
        now: DateTime<Utc>,
    ) -> store::Result<Vec<bool>> {
        let k = keys.iter().map(|(s, i)| (s.to_string(), i.to_string()));
        self.this.keys.extend(k);
        self.inner.first_sight(keys, now)
    }
    fn load(&mut self, ids: &[&str]) -> store::Result<Vec<Option<StoredCustomer>>> {
        self.this.ids.extend(ids.iter().map(|s| s.to_string()));
        self.inner.load(ids)
    }
    fn rows(&mut self, customers: &mut [StoredCustomer]) -> store::Result<()> {
        // Only customers with many journeys or orders have rows: none in these streams.
        self.inner.rows(customers)
    }
    fn park(&mut self, ids: &[&str]) -> store::Result<()> {
        self.inner.park(ids)
    }
    fn claim_due(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> store::Result<Vec<StoredCustomer>> {
        self.inner.claim_due(now, limit)
    }
    fn version(&mut self, name: &str, version: &str) -> store::Result<Option<VersionRecord>> {
        self.inner.version(name, version)
    }
    fn save(&mut self, customers: &[StoredCustomer]) -> store::Result<()> {
        self.this.saved.extend_from_slice(customers);
        self.inner.save(customers)
    }
    fn record(&mut self, decisions: &[Decision]) -> store::Result<()> {
        self.this.decisions.extend_from_slice(decisions);
        self.inner.record(decisions)
    }
    fn trace_emails(&mut self, traced: &[(String, String)]) -> store::Result<()> {
        // Traces are not exported in the bench: nothing is asked.
        self.inner.trace_emails(traced)
    }
    fn note(&mut self, notes: &[Note]) -> store::Result<()> {
        self.this.notes.extend_from_slice(notes);
        self.inner.note(notes)
    }
    fn dead_letter(&mut self, letters: &[DeadLetter], now: DateTime<Utc>) -> store::Result<()> {
        self.inner.dead_letter(letters, now)
    }
    fn forget(
        &mut self,
        customer: &str,
        addresses: &[String],
        erased: &[String],
        now: DateTime<Utc>,
    ) -> store::Result<u64> {
        self.inner.forget(customer, addresses, erased, now)
    }
    fn unerase(&mut self, hashes: &[String]) -> store::Result<()> {
        self.inner.unerase(hashes)
    }
    fn commit(self: Box<Self>) -> store::Result<()> {
        let RecordingTx { inner, asked, this } = *self;
        inner.commit()?;
        asked.push(this);
        Ok(())
    }
}

impl Store for Recording {
    fn begin(&mut self) -> store::Result<Box<dyn Tx + '_>> {
        Ok(Box::new(RecordingTx {
            inner: self.inner.begin()?,
            asked: &mut self.asked,
            this: Asked::default(),
        }))
    }
    fn save_versions(&mut self, v: &[VersionRecord]) -> store::Result<()> {
        self.inner.save_versions(v)
    }
    fn version(&mut self, name: &str, version: &str) -> store::Result<Option<VersionRecord>> {
        self.inner.version(name, version)
    }
    fn is_erased(&mut self, hash: &str) -> store::Result<bool> {
        self.inner.is_erased(hash)
    }
    fn prune_timeline(&mut self, before: DateTime<Utc>) -> store::Result<u64> {
        self.inner.prune_timeline(before)
    }
    fn next_due(&mut self) -> store::Result<Option<DateTime<Utc>>> {
        self.inner.next_due()
    }
    fn load(&mut self, id: &str) -> store::Result<Option<StoredCustomer>> {
        self.inner.load(id)
    }
    fn customer(&mut self, id: &str) -> store::Result<Option<(StoredCustomer, Vec<TimelineRow>)>> {
        self.inner.customer(id)
    }
    fn customers_after(&mut self, after: &str, limit: usize) -> store::Result<Vec<StoredCustomer>> {
        self.inner.customers_after(after, limit)
    }
    fn coupon_given(&mut self, code: &str) -> store::Result<Option<(String, TimelineRow)>> {
        self.inner.coupon_given(code)
    }
    fn journey_counts(&mut self) -> store::Result<Vec<JourneyCount>> {
        self.inner.journey_counts()
    }
    fn claim_emails(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        lease: chrono::Duration,
    ) -> store::Result<Vec<OutboxRow>> {
        self.inner.claim_emails(now, limit, lease)
    }
    fn finish_emails(
        &mut self,
        now: DateTime<Utc>,
        done: &[(OutboxRow, Delivery)],
    ) -> store::Result<Vec<usize>> {
        self.inner.finish_emails(now, done)
    }
    fn counts(&mut self) -> store::Result<Vec<(String, i64)>> {
        self.inner.counts()
    }
    fn figures(
        &mut self,
        now: DateTime<Utc>,
        nps_since: DateTime<Utc>,
    ) -> store::Result<StoreFigures> {
        self.inner.figures(now, nps_since)
    }
    fn experiment_states(&mut self) -> store::Result<Vec<store::ExperimentState>> {
        self.inner.experiment_states()
    }
    fn prune_processed(&mut self, before: DateTime<Utc>) -> store::Result<u64> {
        self.inner.prune_processed(before)
    }
    fn claim_dead_letters(
        &mut self,
        now: DateTime<Utc>,
        limit: usize,
        lease: chrono::Duration,
    ) -> store::Result<Vec<StoredDeadLetter>> {
        self.inner.claim_dead_letters(now, limit, lease)
    }
    fn finish_dead_letters(
        &mut self,
        now: DateTime<Utc>,
        done: &[(i64, Published)],
    ) -> store::Result<()> {
        self.inner.finish_dead_letters(now, done)
    }
    fn dead_letters(&mut self, q: &DeadLetterQuery) -> store::Result<Vec<StoredDeadLetter>> {
        self.inner.dead_letters(q)
    }
    fn dead_letter(&mut self, id: i64) -> store::Result<Option<StoredDeadLetter>> {
        self.inner.dead_letter(id)
    }
    fn mark_replayed(&mut self, ids: &[i64], now: DateTime<Utc>) -> store::Result<()> {
        self.inner.mark_replayed(ids, now)
    }
}

/// Floor: the store's own share of ingest. The events go through the engine once in batches
/// of `batch` (into a scratch store, recording what each transaction asked); then, timed, the
/// same transactions run against a fresh store with no engine and no Kafka: the same keys
/// marked processed, customers loaded and saved, timeline rows and emails written. Events/s;
/// with `counts`, also prints what the store keeps per event.
pub(crate) fn floor_store(name: &str, events: &[String], batch: usize, counts: bool) -> f64 {
    let catalog = aftercare::service::load_catalog(&sequences()).unwrap();
    let mut a = Applier::new(Engine::new(Arc::new(catalog), Policy::default()));
    let parsed: Vec<Arc<Event>> = events
        .iter()
        .map(|e| Arc::new(Event::from_structured(e.as_bytes()).unwrap()))
        .collect();
    let mut recording = Recording {
        inner: store::open(&fresh(name, "storefloorscratch")).unwrap(),
        asked: Vec::new(),
    };
    let now = chrono::Utc::now();
    for chunk in parsed.chunks(batch.max(1)) {
        a.apply(&mut recording, chunk, now).unwrap();
    }
    let per_event = |n: usize| n as f64 / events.len() as f64;
    let emails = |a: &Asked| a.decisions.iter().filter(|d| d.email.is_some()).count();
    if counts {
        println!(
            "  (per event: {:.2} dedupe keys, {:.2} customer loads and upserts, {:.2} timeline rows, {:.2} emails queued)",
            per_event(recording.asked.iter().map(|a| a.keys.len()).sum()),
            per_event(recording.asked.iter().map(|a| a.saved.len()).sum()),
            per_event(
                recording
                    .asked
                    .iter()
                    .map(|a| a.decisions.len() + a.notes.len())
                    .sum()
            ),
            per_event(recording.asked.iter().map(emails).sum()),
        );
    }
    let mut store = store::open(&fresh(name, "storefloor")).unwrap();
    let started = Instant::now();
    for asked in &recording.asked {
        let mut tx = store.begin().unwrap();
        let keys: Vec<(&str, &str)> = asked
            .keys
            .iter()
            .map(|(s, i)| (s.as_str(), i.as_str()))
            .collect();
        tx.first_sight(&keys, now).unwrap();
        let ids: Vec<&str> = asked.ids.iter().map(String::as_str).collect();
        tx.load(&ids).unwrap();
        tx.save(&asked.saved).unwrap();
        tx.record(&asked.decisions).unwrap();
        if !asked.notes.is_empty() {
            tx.note(&asked.notes).unwrap();
        }
        tx.commit().unwrap();
    }
    events.len() as f64 / started.elapsed().as_secs_f64()
}
