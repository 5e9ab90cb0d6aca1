//! The cost of one event as a customer's history grows (SPEC §7: "the cost of one event does
//! not grow with the customer's history").
//!
//! `cargo bench --bench history` gives one customer N orders in flight (N = 10, 1,000, 10,000),
//! each with a journey waiting for its delivery, then times events that keep N steady — an
//! `order.delivered` (a journey sends and completes) then an `order.placed` (a journey enters,
//! sends and waits) — one at a time:
//! - simulate: the engine on the customer in memory, as `simulate` runs it;
//! - run: `Applier::apply` on a SQLite store, one event per transaction (a busy customer's
//!   events arrive among other customers', each in a batch of its own), load and save included.
//!
//! The floor is the 10-journey case of the same mode in the same run; each line reports the
//! median per-event time and its ratio to the floor (target: ≤ 3× at 10,000).

use std::sync::Arc;
use std::time::Instant;

use aftercare::engine::{Customer, Engine, Policy};
use aftercare::event::Event;
use aftercare::sequence::Catalog;
use aftercare::service::apply::Applier;
use aftercare::template::Templates;
use chrono::{DateTime, Duration, Utc};

const SEQUENCE: &str = "name: ship\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: confirm\n    email: { template: t/a }\n  - id: arrived\n    wait_for: { event: order.delivered, timeout: 3000d, on_timeout: exit }\n    email: { template: t/b }\n";

/// Timed pairs of events per size (each pair keeps the number of journeys in flight).
const PAIRS: usize = 200;
const SIZES: [usize; 3] = [10, 1_000, 10_000];

fn catalog() -> Arc<Catalog> {
    let templates = ["a", "b"]
        .iter()
        .flat_map(|n| {
            [
                (
                    format!("t/{n}.subject.j2"),
                    format!("{n} for {{{{ order.id }}}}"),
                ),
                (format!("t/{n}.html.j2"), format!("<p>{n}</p>")),
            ]
        })
        .collect();
    let (templates, diags) = Templates::from_files("templates", templates);
    assert!(diags.is_empty(), "{diags:?}");
    let (catalog, diags) = Catalog::from_sources(
        vec![("ship.yaml".into(), SEQUENCE.into())],
        templates,
        vec![],
    );
    assert!(diags.is_empty(), "{diags:?}");
    Arc::new(catalog)
}

fn t0() -> DateTime<Utc> {
    Utc::now() - Duration::days(1)
}

/// When the timed events are applied: after every one of them happened.
fn later(at: DateTime<Utc>) -> DateTime<Utc> {
    at + Duration::hours(1)
}

fn event(kind: &str, order: usize, at: DateTime<Utc>) -> Arc<Event> {
    let data = if kind == "order.placed" {
        format!(
            r#"{{"order_id":"o{order}","total":"10","currency":"EUR","items":[{{"sku":"s","name":"n","category":"c","quantity":1,"unit_price":"10"}}],"customer":{{"email":"hot@example.com"}}}}"#
        )
    } else {
        format!(r#"{{"order_id":"o{order}"}}"#)
    };
    let text = format!(
        r#"{{"specversion":"1.0","id":"{kind}-{order}","source":"/bench","type":"{kind}","time":"{}","subject":"hot","data":{data}}}"#,
        aftercare::time::rfc3339(at)
    );
    Arc::new(Event::from_structured(text.as_bytes()).expect("event"))
}

/// The timed events, a second apart after the setup's: deliver the oldest order in flight,
/// place a new one.
fn pairs(n: usize, at: DateTime<Utc>) -> Vec<Arc<Event>> {
    let second = |k: usize| at + Duration::seconds(k as i64 + 1);
    (0..PAIRS)
        .flat_map(|i| {
            [
                event("order.delivered", i, second(2 * i)),
                event("order.placed", n + i, second(2 * i + 1)),
            ]
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median microseconds per event in memory, with `n` journeys in flight.
fn simulate(n: usize) -> f64 {
    let engine = Engine::new(catalog(), Policy::default());
    let mut c = Customer::new("hot".into());
    let at = t0();
    let mut out = Vec::new();
    for i in 0..n {
        engine.handle_event(&mut c, &event("order.placed", i, at), at, &mut out);
    }
    assert_eq!(c.journeys.len(), n);
    let mut times = Vec::with_capacity(2 * PAIRS);
    let now = later(at);
    for e in pairs(n, at) {
        out.clear();
        let started = Instant::now();
        engine.handle_event(&mut c, &e, now, &mut out);
        let due = Engine::next_due(&c);
        times.push(started.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(due);
    }
    assert_eq!(c.journeys.len(), n);
    median(times)
}

/// Median microseconds per event through the store, with `n` journeys in flight.
fn run(n: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!("aftercare-history-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut store =
        aftercare::store::open(&format!("sqlite://{}", dir.join("a.db").display())).expect("store");
    let mut applier = Applier::new(Engine::new(catalog(), Policy::default()));
    let at = t0();
    let setup: Vec<Arc<Event>> = (0..n).map(|i| event("order.placed", i, at)).collect();
    for chunk in setup.chunks(500) {
        applier.apply(&mut *store, chunk, at).expect("setup");
    }
    let mut times = Vec::with_capacity(2 * PAIRS);
    let now = later(at);
    for e in pairs(n, at) {
        let started = Instant::now();
        applier
            .apply(&mut *store, std::slice::from_ref(&e), now)
            .expect("apply");
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let (stored, _) = store.customer("hot").expect("read").expect("customer");
    let journeys = aftercare::store::record::journeys(&stored)
        .expect("journeys")
        .len();
    assert_eq!(journeys, n);
    println!(
        "run (SQLite): {n} journeys in flight: the customer's stored state is {} bytes",
        stored.state.len()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    median(times)
}

fn report(mode: &str, f: fn(usize) -> f64) {
    let floor = f(SIZES[0]);
    println!(
        "{mode}: {} journeys in flight: {floor:.1} µs/event (floor)",
        SIZES[0]
    );
    for &n in &SIZES[1..] {
        let t = f(n);
        println!(
            "{mode}: {n} journeys in flight: {t:.1} µs/event = {:.2}× the floor",
            t / floor
        );
    }
}

fn main() {
    report("simulate", simulate);
    report("run (SQLite)", run);
}
