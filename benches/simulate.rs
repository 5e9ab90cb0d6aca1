//! Simulate throughput on the full CDNOW stream against its floor, and memory per journey.
//!
//! `cargo bench --bench simulate` prints, for the same JSON Lines in memory:
//! - floor: read and parse every line into `serde_json::Value` (nothing else);
//! - simulate: `replay` through the starter sequences, output to a sink;
//!   medians of several runs, and the ratio simulate/floor;
//! - memory, each in a fresh child process: peak RSS of the CDNOW replay with the peak number of
//!   active journeys, and RSS growth per active journey when N customers each hold journeys.

use std::io::BufRead;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use aftercare::engine::{Engine, Policy};
use aftercare::sequence::Catalog;
use aftercare::simulate::{Simulator, replay, replay_parallel};
use aftercare::time::Period;

const RUNS: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("child-cdnow") => child_cdnow(Path::new(&args[1])),
        Some("child-journeys") => {
            child_journeys(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(100_000))
        }
        _ => parent(),
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cdnow_jsonl() -> Vec<u8> {
    let text =
        std::fs::read_to_string(root().join("data/cdnow/CDNOW_master.txt")).expect("CDNOW data");
    let rows = aftercare::cdnow::parse(&text).expect("CDNOW rows");
    let mut out = Vec::new();
    aftercare::cdnow::write_events(&rows, None, &mut out).expect("write events");
    out
}

fn engine() -> Engine {
    let (catalog, diags) = Catalog::load(&root().join("sequences")).expect("sequences");
    assert!(diags.is_empty(), "starter sequences invalid: {diags:?}");
    Engine::new(Arc::new(catalog), Policy::default())
}

fn simulator() -> Simulator {
    Simulator::new(engine())
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn until() -> Period {
    "90d".parse().expect("period")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn parent() {
    let path = std::env::temp_dir().join(format!("aftercare-bench-{}.jsonl", std::process::id()));
    std::fs::write(&path, cdnow_jsonl()).expect("write stream");
    let jsonl = std::fs::read(&path).expect("read stream");
    let events = jsonl
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    println!(
        "CDNOW stream: {events} events, {:.1} MB",
        jsonl.len() as f64 / 1e6
    );

    let mut floor = Vec::new();
    let mut sim = Vec::new();
    let mut par = Vec::new();
    let mut decisions = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let mut n = 0usize;
        for line in jsonl.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("json");
            n += usize::from(v.is_object());
        }
        assert_eq!(n, events);
        floor.push(events as f64 / t.elapsed().as_secs_f64());

        let mut s = simulator();
        let t = Instant::now();
        let summary =
            replay(&mut s, &jsonl[..], &mut std::io::sink(), until(), |_, _| {}).expect("replay");
        sim.push(events as f64 / t.elapsed().as_secs_f64());
        decisions = summary.stats.decisions;
        std::mem::forget(s);

        let engines = (0..threads()).map(|_| engine()).collect();
        let t = Instant::now();
        let summary = replay_parallel(
            engines,
            &jsonl[..],
            &mut std::io::sink(),
            until(),
            |_, _| {},
        )
        .expect("replay");
        par.push(events as f64 / t.elapsed().as_secs_f64());
        assert_eq!(summary.stats.decisions, decisions);
    }
    println!(
        "runs (events/s): floor {floor:.0?}, 1 thread {sim:.0?}, {} threads {par:.0?}",
        threads()
    );
    let (floor, sim, par) = (median(floor), median(sim), median(par));
    println!("floor (read + parse JSON lines, 1 thread): {floor:>9.0} events/s (median of {RUNS})");
    println!(
        "simulate, 1 thread:                        {sim:>9.0} events/s ({:.1}% of floor), {decisions} decisions",
        100.0 * sim / floor
    );
    println!(
        "simulate, {} threads (the CLI default):     {par:>9.0} events/s ({:.1}% of floor)",
        threads(),
        100.0 * par / floor
    );

    let exe = std::env::current_exe().expect("exe");
    let stream = path.display().to_string();
    for args in [
        vec!["child-cdnow".to_string(), stream],
        vec!["child-journeys".into(), "100000".into()],
        vec!["child-journeys".into(), "1000000".into()],
    ] {
        let out = Command::new(&exe).args(&args).output().expect("child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Resident and peak resident memory of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn active(sim: &Simulator) -> usize {
    sim.store().customers().map(|c| c.journeys.len()).sum()
}

/// Peak RSS of one CDNOW replay, and the peak number of journeys in flight.
fn child_cdnow(path: &Path) {
    let file = std::io::BufReader::new(std::fs::File::open(path).expect("open stream"));
    let mut sim = simulator();
    let (base, _) = rss();
    let mut peak_active = 0;
    let mut out = Vec::new();
    for (i, line) in file.lines().enumerate() {
        let line = line.expect("line");
        if let Ok(ev) = aftercare::event::Event::from_structured(line.as_bytes()) {
            sim.push_event(ev, &mut out);
            out.clear();
        }
        if i % 5_000 == 0 {
            peak_active = peak_active.max(active(&sim));
        }
    }
    let (now, hwm) = rss();
    println!(
        "CDNOW replay: {} customers, peak {peak_active} journeys in flight; RSS {:.1} MiB (high-water {:.1} MiB, {:.1} MiB more than before the replay)",
        sim.store().customer_count(),
        now as f64 / 1048576.0,
        hwm as f64 / 1048576.0,
        now.saturating_sub(base) as f64 / 1048576.0,
    );
}

/// N customers, each with one order in flight: RSS growth per active journey.
fn child_journeys(n: usize) {
    let mut sim = simulator();
    let mut out = Vec::new();
    let (base, _) = rss();
    for i in 0..n {
        let ev = format!(
            r#"{{"specversion":"1.0","id":"p{i}","source":"/bench","type":"order.placed","time":"2024-01-01T00:00:00Z","subject":"c{i:07}","data":{{"order_id":"o{i}","total":"20.00","currency":"USD","items":[{{"sku":"bag-1","name":"Bag","category":"bag","quantity":1,"unit_price":"20.00"}}],"customer":{{"email":"c{i:07}@example.com","name":"Customer {i}","locale":"en-US","timezone":"America/New_York"}}}}}}"#
        );
        let ev = aftercare::event::Event::from_structured(ev.as_bytes()).expect("event");
        sim.push_event(ev, &mut out);
        out.clear();
    }
    let (now, _) = rss();
    let journeys = active(&sim);
    println!(
        "{n} customers with an order in flight: {journeys} active journeys, RSS growth {:.1} MiB: {:.0} B per active journey (customer, profile and order included)",
        (now - base) as f64 / 1048576.0,
        (now - base) as f64 / journeys.max(1) as f64
    );
}

// The allocator the `aftercare` binary uses, so the figures are the CLI's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
