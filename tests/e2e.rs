//! End to end with a real broker process (tansu) and the real binary: `run` decides what
//! `simulate` decides; a crash between commit and offset loses and doubles nothing; dry run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use common::scratch;
use common::service::{sequences_dir, wait_until};
use common::stores::TestStore;
use common::tansu::{Aftercare, Tansu, aftercare, publish, write_config};
use serde_json::{Value, json};

/// Waits short enough to watch in real time; the same file drives both engines.
const FLOW: &str = "name: flow\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/a }\n  - id: shipped\n    wait_for: { event: order.shipped, timeout: 8s, on_timeout: late }\n    email: { template: t/b }\n  - id: done\n    exit: true\n  - id: late\n    email: { template: t/c }\n";
const NUDGE: &str = "name: nudge\ncategory: education\njourney: per_order\ntrigger: { event: order.delivered }\nsteps:\n  - id: tip\n    wait: 2s\n    email: { template: t/d }\n";

/// Orders placed in a second; every other one ships 4 s later and is delivered 4 s after that.
/// The gaps are wider than the broker's delivery latency: a step that runs late in `run` (it
/// counts from when it really ran) must still fall before the customer's next event.
fn events(dir: &Path, n: usize) -> PathBuf {
    // A second ahead: published and applied before their time comes.
    let t0 = Utc::now() + chrono::Duration::seconds(1);
    let at = |s: i64| aftercare::time::rfc3339(t0 + chrono::Duration::seconds(s));
    let mut lines = Vec::new();
    for i in 0..n {
        let (c, o) = (format!("c{i}"), format!("o{i}"));
        lines.push(json!({"specversion": "1.0", "id": format!("p{i}"), "source": "/shop", "type": "order.placed", "time": at(0), "subject": c,
            "data": {"order_id": o, "total": 9, "currency": "EUR", "items": [], "customer": {"email": format!("{c}@example.com"), "name": c}}}));
    }
    for i in (0..n).step_by(2) {
        let (c, o) = (format!("c{i}"), format!("o{i}"));
        lines.push(json!({"specversion": "1.0", "id": format!("s{i}"), "source": "/wh", "type": "order.shipped", "time": at(4), "subject": c,
            "data": {"order_id": o, "carrier": "UPS", "tracking_number": "T"}}));
    }
    for i in (0..n).step_by(2) {
        let (c, o) = (format!("c{i}"), format!("o{i}"));
        lines.push(json!({"specversion": "1.0", "id": format!("d{i}"), "source": "/wh", "type": "order.delivered", "time": at(8), "subject": c,
            "data": {"order_id": o}}));
    }
    let path = dir.join("events.jsonl");
    std::fs::write(
        &path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    path
}

fn replay_in_real_time(brokers: &str, events: &Path) {
    let p = common::service::producer(brokers);
    let text = std::fs::read_to_string(events).unwrap();
    let mut lines = text
        .lines()
        .map(|l| (serde_json::from_str::<Value>(l).unwrap(), l))
        .peekable();
    while let Some((first, _)) = lines.peek() {
        let time = first["time"].as_str().unwrap().to_string();
        let at = chrono::DateTime::parse_from_rfc3339(&time)
            .unwrap()
            .with_timezone(&Utc);
        if let Ok(wait) = (at - Utc::now()).to_std() {
            std::thread::sleep(wait); // pacing the input like a live shop, not synchronising
        }
        while let Some((v, line)) = lines.next_if(|(v, _)| v["time"] == time.as_str()) {
            common::service::send(
                &p,
                "orders",
                v["subject"].as_str().unwrap(),
                line.as_bytes(),
                &[],
            );
        }
        common::service::flush(&p);
    }
}

/// Per customer, the decisions without their instant: (sequence, step, action, reason, subject).
type ByCustomer = BTreeMap<String, Vec<(String, String, String, String, String)>>;

fn by_customer(lines: impl Iterator<Item = Value>) -> ByCustomer {
    let mut out = ByCustomer::new();
    for v in lines {
        let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
        out.entry(s("customer")).or_default().push((
            s("sequence"),
            s("step"),
            s("action"),
            s("reason"),
            s("subject"),
        ));
    }
    out
}

#[test]
fn run_makes_the_decisions_simulate_makes() {
    let dir = scratch("same");
    let seqs = sequences_dir("same", &[("flow.yaml", FLOW), ("nudge.yaml", NUDGE)]);
    let kafka = Tansu::start(&["orders", "support", "aftercare.dlq"]);
    let store = TestStore::sqlite();
    let config = write_config(&dir, &kafka.brokers, "same", &store.url, &seqs);
    // Event times are near the real clock: `run` must meet them before they pass, or its
    // waits (which count from when a step really ran) would drift from simulate's. So the
    // stream is made once `run` is consuming (a warm-up event of a type no sequence knows).
    let mut run = Aftercare::run(&config, &[], &[]);
    let warmup = dir.join("warmup.jsonl");
    let w = json!({"specversion": "1.0", "id": "w", "source": "/test", "type": "test.warmup", "time": aftercare::time::rfc3339(Utc::now()), "subject": "warmup"});
    std::fs::write(&warmup, format!("{w}\n")).unwrap();
    publish(&config, &warmup);
    wait_until(60, "run to join the group and consume", || {
        store.count("SELECT COUNT(*) FROM processed_events") == 1
    });
    let events = events(&dir, 10);

    let sim = aftercare()
        .args(["simulate", "--until", "1h", "--sequences"])
        .arg(&seqs)
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    assert!(sim.status.success());
    let expected = by_customer(
        String::from_utf8(sim.stdout.clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap()),
    );
    let decisions: usize = expected.values().map(Vec::len).sum();

    // Each event is published when its time comes, as a shop's backend would: `run` applies it
    // within moments, so its waits (which count from when steps really ran) match simulate's.
    replay_in_real_time(&kafka.brokers, &events);
    wait_until(60, "run to make as many decisions as simulate", || {
        store.count(&format!(
            "SELECT COUNT(*) FROM timeline WHERE action NOT IN {DELIVERY}"
        )) as usize
            >= decisions
    });
    wait_until(30, "every email sent", || {
        store.count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 0
    });
    let (took, _) = run.terminate();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");

    let mut db = aftercare::store::open(&store.url).unwrap();
    let mut got = ByCustomer::new();
    for customer in expected.keys() {
        let (_, timeline) = db.customer(customer).unwrap().unwrap();
        got.insert(
            customer.clone(),
            timeline
                .into_iter()
                .filter(|t| !DELIVERY.contains(&format!("'{}'", t.action)))
                .map(|t| {
                    (
                        t.sequence,
                        t.step.unwrap_or("-".into()),
                        t.action,
                        t.reason,
                        t.subject.unwrap_or("-".into()),
                    )
                })
                .collect(),
        );
    }
    assert_eq!(got, expected);
    // `aftercare customer` prints the decisions as simulate does, and how each email went.
    let shown = aftercare()
        .args(["customer", "c0", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    let simulated = String::from_utf8(sim.stdout).unwrap();
    // The same line but for `at` (run decides on the wall clock).
    let first = simulated.lines().find(|l| l.contains("\"c0\"")).unwrap();
    let (_, first) = first.split_once(",\"customer\"").unwrap();
    assert!(shown.contains(first), "{first}\nnot in\n{shown}");
    assert!(
        shown.contains("\"step\":\"receipt\",\"action\":\"sent\",\"reason\":\"accepted as <"),
        "{shown}"
    );
    let emails = expected
        .values()
        .flatten()
        .filter(|d| d.2 == "email")
        .count();
    assert_eq!(std::fs::read_dir(dir.join("mail")).unwrap().count(), emails);
}

/// Timeline lines the outbox adds (how sends went); simulate sends nothing.
const DELIVERY: &str = "('sent', 'retry', 'failed', 'bounce')";

#[test]
fn a_crash_between_commit_and_offset_applies_each_event_exactly_once() {
    let dir = scratch("crash");
    let seqs = sequences_dir("crash", &[("flow.yaml", FLOW)]);
    let kafka = Tansu::start(&["orders", "support", "aftercare.dlq"]);
    let store = TestStore::sqlite();
    let config = write_config(&dir, &kafka.brokers, "crash", &store.url, &seqs);
    let events = events(&dir, 40);
    let marker = dir.join("committed");

    let fault = format!("pause-after-commit:{}", marker.display());
    let mut first = Aftercare::run(&config, &[], &[("AFTERCARE_FAULT", &fault)]);
    publish(&config, &events);
    wait_until(60, "a committed batch", || marker.exists());
    let applied_before = store.count("SELECT COUNT(*) FROM processed_events");
    assert!(applied_before > 0);
    first.kill();
    // tansu 0.6 can leave a member that joins while the killed one's session is still open
    // without partitions; its session (6 s) must expire first.
    std::thread::sleep(Duration::from_secs(8));

    let mut second = Aftercare::run(&config, &[], &[]);
    // One more order after the crash: once it is applied, everything before it on its
    // partition has been read again.
    let after = dir.join("after.jsonl");
    std::fs::write(
        &after,
        std::fs::read_to_string(&events)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .replace("\"p0\"", "\"p-after\"")
            .replace("\"o0\"", "\"o-after\"")
            + "\n",
    )
    .unwrap();
    publish(&config, &after);
    wait_until(90, "every event applied", || {
        store.count("SELECT COUNT(*) FROM processed_events") == 81
    });
    let (_, log) = second.terminate();
    // The second process was handed the crashed batch again: its effects were already there.
    let dupes: u64 = log
        .lines()
        .filter(|l| l.contains("stopped"))
        .find_map(|l| {
            l.split("duplicates=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(
        dupes >= applied_before as u64,
        "expected the uncommitted batch redelivered: {dupes} duplicate(s)\n{log}"
    );
    assert_eq!(
        store.count("SELECT COUNT(*) FROM timeline WHERE action = 'enter'"),
        41
    );
    assert_eq!(
        store.count("SELECT COUNT(DISTINCT journey) FROM timeline WHERE action = 'enter'"),
        41
    );
    assert_eq!(
        store.count("SELECT COUNT(*) FROM timeline WHERE step = 'receipt' AND action = 'email'"),
        41
    );
}

#[test]
fn dry_run_records_every_email_and_sends_none() {
    let dir = scratch("dry");
    let seqs = sequences_dir("dry", &[("flow.yaml", FLOW)]);
    let kafka = Tansu::start(&["orders", "support", "aftercare.dlq"]);
    let store = TestStore::sqlite();
    let config = write_config(&dir, &kafka.brokers, "dry", &store.url, &seqs);
    let events = events(&dir, 4);
    let mut run = Aftercare::run(&config, &["--dry-run"], &[]);
    publish(&config, &events);
    wait_until(60, "the receipts recorded", || {
        store.count("SELECT COUNT(*) FROM outbox WHERE status = 'dry-run'") >= 4
    });
    run.terminate();
    assert_eq!(
        store.count("SELECT COUNT(*) FROM outbox WHERE status = 'sent'"),
        0
    );
    assert_eq!(
        store.count("SELECT COUNT(*) FROM outbox WHERE message_id IS NULL"),
        0
    );
    assert!(
        !dir.join("mail").exists() || std::fs::read_dir(dir.join("mail")).unwrap().count() == 0
    );
}

/// A holdout experiment with a split step; its measure is a second order within a day.
const TRIAL: &str = "name: trial\ncategory: education\njourney: per_customer\ntrigger: { event: order.placed }\nexperiment:\n  holdout: 30%\n  salt: e2e\n  measure:\n    - { name: again, event: order.placed, within: 1d }\nsteps:\n  - id: tip\n    wait: 1h\n    email: { template: t/d }\n    variants:\n      - { id: a, weight: 1 }\n      - { id: b, weight: 1, email: { template: t/b } }\n";

/// SPEC §8: the same events through `run` (tansu, SQLite) and `simulate` put every customer
/// in the same group and give the same figures once the windows have closed. The events are
/// a year old, so every window closed long ago on `run`'s clock as on simulate's (which
/// ends 90 days after the last event); `policy.max_event_age` lets such old events enrol.
#[test]
fn run_assigns_the_groups_simulate_assigns_and_counts_the_same_figures() {
    let dir = scratch("groups");
    let seqs = sequences_dir("groups", &[("trial.yaml", TRIAL)]);
    let kafka = Tansu::start(&["orders", "support", "aftercare.dlq"]);
    let store = TestStore::sqlite();
    let config = write_config(&dir, &kafka.brokers, "groups", &store.url, &seqs);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[policy]\nmax_event_age = \"3650d\"\n");
    std::fs::write(&config, text).unwrap();

    let t0 = Utc::now() - chrono::Duration::days(365);
    let at = |minutes: i64| aftercare::time::rfc3339(t0 + chrono::Duration::minutes(minutes));
    let placed = |id: String, c: &str, o: String, minutes: i64| {
        json!({"specversion": "1.0", "id": id, "source": "/shop", "type": "order.placed", "time": at(minutes), "subject": c,
            "data": {"order_id": o, "total": 9, "currency": "EUR", "items": [], "customer": {"email": format!("{c}@example.com")}}})
    };
    let n = 60;
    let mut lines = Vec::new();
    for i in 0..n {
        let c = format!("c{i}");
        lines.push(placed(format!("p{i}"), &c, format!("o{i}"), i));
    }
    // A third reorder within the day (12 h on), a few more after it closed (2 days on).
    for i in (0..n).step_by(3) {
        let c = format!("c{i}");
        lines.push(placed(format!("r{i}"), &c, format!("r{i}"), i + 12 * 60));
    }
    for i in (1..n).step_by(7) {
        let c = format!("c{i}");
        lines.push(placed(format!("l{i}"), &c, format!("l{i}"), i + 48 * 60));
    }
    let events = dir.join("events.jsonl");
    std::fs::write(
        &events,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();

    let report_file = dir.join("report.json");
    let sim = aftercare()
        .args(["simulate", "-c"])
        .arg(&config)
        .arg("--events")
        .arg(&events)
        .arg("--report")
        .arg(&report_file)
        .output()
        .unwrap();
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    let entered = |lines: Vec<(String, String, String)>| -> BTreeMap<String, String> {
        lines
            .into_iter()
            .filter(|(_, action, _)| action == "enter")
            .map(|(c, _, reason)| (c, reason))
            .collect()
    };
    let simulated = entered(
        String::from_utf8(sim.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap().to_string();
                (s("customer"), s("action"), s("reason"))
            })
            .collect(),
    );
    assert_eq!(simulated.len(), n as usize);
    let held = simulated
        .values()
        .filter(|r| r.contains("; held out: bucket "))
        .count();
    assert!((5..=30).contains(&held), "{held} of {n} held out");

    let mut run = Aftercare::run(&config, &[], &[]);
    publish(&config, &events);
    wait_until(90, "run to apply every event", || {
        store.count("SELECT COUNT(*) FROM processed_events") == lines.len() as i64
    });
    wait_until(60, "every email step to run", || {
        store.count("SELECT COUNT(*) FROM timeline WHERE action IN ('email', 'holdout')") == n
    });
    run.terminate();

    let mut db = aftercare::store::open(&store.url).unwrap();
    let mut ran = Vec::new();
    for c in simulated.keys() {
        let (_, timeline) = db.customer(c).unwrap().unwrap();
        ran.extend(
            timeline
                .into_iter()
                .map(|t| (c.clone(), t.action, t.reason)),
        );
    }
    assert_eq!(entered(ran), simulated, "the same group for every customer");

    // The figures: run's (the figures thread's function over the store) and simulate's.
    let (catalog, _) = aftercare::sequence::Catalog::load(&seqs).unwrap();
    let now = Utc::now();
    let stored = db.figures(now, now).unwrap();
    let from_run = serde_json::to_value(aftercare::service::figures::experiments(
        &stored.experiments,
        &catalog,
        now,
    ))
    .unwrap();
    let from_sim: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    let figures = |v: &Value| {
        let x = &v["experiments"][0];
        let mut m = x["measures"][0].clone();
        m.as_object_mut().unwrap().remove("plan");
        (m, x["variants"].clone())
    };
    assert_eq!(figures(&from_run), figures(&from_sim));
    let (m, variants) = figures(&from_sim);
    assert_eq!(m["open"], 0);
    assert_eq!(
        m["treated"]["customers"].as_u64().unwrap() + m["held_out"]["customers"].as_u64().unwrap(),
        n as u64
    );
    assert_eq!(
        m["treated"]["converted"].as_u64().unwrap() + m["held_out"]["converted"].as_u64().unwrap(),
        20,
        "the 20 reorders within the day, not the later ones"
    );
    // `plan` reads the same figures from the store: the groups and what they can detect.
    let plan = aftercare()
        .args(["plan", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let plan = String::from_utf8(plan.stdout).unwrap();
    let group = |g: &str| format!("{} of {}", m[g]["converted"], m[g]["customers"]);
    let line = format!(
        "again (order.placed within 1d): treated {} (",
        group("treated")
    );
    assert!(
        plan.contains("experiment trial (holdout 30.0%, salt e2e)"),
        "{plan}"
    );
    assert!(
        plan.contains(&line) && plan.contains(&format!("held out {} (", group("held_out"))),
        "{plan}"
    );
    assert!(
        plan.contains("these groups detect an uplift of +"),
        "{plan}"
    );
    let sends: u64 = variants
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["sends"].as_u64().unwrap())
        .sum();
    assert_eq!(
        sends,
        n as u64 - held as u64,
        "held-out customers are sent no variant"
    );
}
