//! What the measures stand on: the CDNOW stream, publishing, stores to measure on, CPU and
//! process figures, medians.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aftercare::engine::{Engine, Policy};
use aftercare::event::Event;
use aftercare::service::apply::Applier;
use aftercare::service::{self};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::common::stores::pg_base;

pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// CDNOW events, moved so the stream ends now (no backfill), `n` of them.
pub(crate) fn stream(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(root().join("data/cdnow/CDNOW_master.txt")).expect("CDNOW");
    let rows = aftercare::cdnow::parse(&text).expect("rows");
    let mut events = aftercare::cdnow::events_ending_at(&rows, chrono::Utc::now());
    events.truncate(n);
    events
}

pub(crate) fn publish(brokers: &str, events: &[String]) {
    publish_to(brokers, "orders", events)
}

pub(crate) fn publish_to(brokers: &str, topic: &str, events: &[String]) {
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

pub(crate) fn sequences() -> PathBuf {
    root().join("sequences")
}

/// The machine's CPU ticks from /proc/stat: (busy, all), over every core.
pub(crate) fn machine_ticks() -> (u64, u64) {
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
pub(crate) fn stat_ticks(stat: &std::path::Path) -> u64 {
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
pub(crate) fn thread_ticks(name: &str) -> u64 {
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
pub(crate) fn machine_busy(from: (u64, u64)) -> f64 {
    let now = machine_ticks();
    100.0 * (now.0 - from.0) as f64 / (now.1 - from.1).max(1) as f64
}

pub(crate) fn sqlite_url(name: &str) -> (String, PathBuf) {
    let dir = std::env::temp_dir().join(format!("aftercare-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    (format!("sqlite://{}", dir.join("a.db").display()), dir)
}

pub(crate) fn pg_url(name: &str) -> String {
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
pub(crate) fn median(runs: usize, mut f: impl FnMut(usize) -> f64) -> f64 {
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
pub(crate) fn seed(url: &str, from: usize, total: usize) {
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

pub(crate) fn count(url: &str, name: &str) -> i64 {
    let mut store = aftercare::store::open(url).unwrap();
    store
        .counts()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| v)
}

/// An empty store of the kind `name`.
pub(crate) fn fresh(name: &str, tag: &str) -> String {
    if name == "sqlite" {
        sqlite_url(tag).0
    } else {
        pg_url(tag)
    }
}
