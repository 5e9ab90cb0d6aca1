//! `run` against librdkafka's in-process mock cluster (a real Kafka protocol peer with fault
//! injection): dead letters, a broker outage, a restart, a rebalance.

mod common;

use common::service::{
    config, flush, producer, read_topic, send, sequences_dir, start, wait_until,
};
use common::stores::TestStore;
use rdkafka::mocking::MockCluster;
use serde_json::json;

const THANKS: &str = "name: thanks\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/a }\n  - id: followup\n    wait: 1h\n    email: { template: t/b }\n";

fn cluster(brokers: i32) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let c = MockCluster::new(brokers).unwrap();
    c.create_topic("orders", 3, 1).unwrap();
    c.create_topic("support", 3, 1).unwrap();
    c.create_topic("aftercare.dlq", 1, 1).unwrap();
    c
}

/// An order per customer `c{i}` (order `o{i}`) for each `i` of `range`, to `orders`.
fn orders(
    p: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    range: std::ops::Range<usize>,
) {
    for i in range {
        send(
            p,
            "orders",
            &format!("c{i}"),
            placed(&format!("c{i}"), &format!("o{i}")).as_bytes(),
            &[],
        );
    }
}

/// `n` journeys entered, one per customer.
fn entered_once_each(store: &TestStore, n: i64) {
    assert_eq!(
        store.count("SELECT COUNT(*) FROM timeline WHERE action = 'enter'"),
        n
    );
    assert_eq!(
        store.count("SELECT COUNT(DISTINCT customer) FROM timeline WHERE action = 'enter'"),
        n
    );
}

fn placed(customer: &str, order: &str) -> String {
    json!({"specversion": "1.0", "id": format!("p-{order}"), "source": "/shop", "type": "order.placed",
        "time": aftercare::time::rfc3339(chrono::Utc::now()), "subject": customer,
        "data": {"order_id": order, "total": "10.00", "currency": "EUR", "items": [],
                 "customer": {"email": format!("{customer}@example.com")}}})
    .to_string()
}

#[test]
fn events_reach_the_store_and_every_poison_class_the_dead_letter_topic() {
    let kafka = cluster(1);
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seqs = sequences_dir("dlq", &[("thanks.yaml", THANKS)]);
    let mut cfg = config(&brokers, "dlq-test", &store.url, &seqs, &seqs.join("mail"));
    cfg.kafka.max_event_bytes = 4096;
    let service = start(cfg);

    let p = producer(&brokers);
    // Two good events, one per binding.
    send(&p, "orders", "ann", placed("ann", "o1").as_bytes(), &[]);
    let now = aftercare::time::rfc3339(chrono::Utc::now());
    let binary_data = r#"{"order_id":"o2","total":5,"currency":"EUR","items":[],"customer":{"email":"bob@example.com"}}"#;
    let ce = |missing: &str| -> Vec<(&'static str, String)> {
        [
            ("ce_specversion", "1.0"),
            ("ce_id", "b-1"),
            ("ce_source", "/shop"),
            ("ce_type", "order.placed"),
            ("ce_subject", "bob"),
        ]
        .into_iter()
        .filter(|(k, _)| *k != missing)
        .map(|(k, v)| (k, v.to_string()))
        .chain(std::iter::once(("ce_time", now.clone())))
        .collect()
    };
    let headers = ce("");
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send(&p, "orders", "bob", binary_data.as_bytes(), &h);

    // Every class of malformed input, keyed by its class.
    let mut poison = common::malformed(&placed("x", "ox"));
    poison.push((
        "oversized",
        vec![b' '; 5000],
        "message is 5000 bytes, over the 4096-byte limit".into(),
    ));
    for (key, payload, _) in &poison {
        send(&p, "orders", key, payload, &[]);
    }
    let no_subject = ce("ce_subject");
    let h: Vec<(&str, &str)> = no_subject.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send(
        &p,
        "orders",
        "binary-no-subject",
        binary_data.as_bytes(),
        &h,
    );
    flush(&p);

    let letters = read_topic(&brokers, "aftercare.dlq", poison.len() + 1);
    wait_until(30, "both good events applied", || {
        store.count("SELECT COUNT(*) FROM processed_events") == 2
    });
    let stats = service.stop();

    for (key, payload, reason) in &poison {
        let l = letters
            .iter()
            .find(|l| l.key.as_deref() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("{key} not dead-lettered"));
        assert_eq!(l.header("aftercare.error"), reason, "{key}");
        assert_eq!(&l.value, payload, "{key}: value changed");
        assert_eq!(l.header("aftercare.source.topic"), "orders");
        assert!(
            l.header("aftercare.source.partition")
                .parse::<i32>()
                .is_ok_and(|p| (0..3).contains(&p))
        );
        assert!(l.header("aftercare.source.offset").parse::<i64>().is_ok());
    }
    let l = letters
        .iter()
        .find(|l| l.key.as_deref() == Some(&b"binary-no-subject"[..]))
        .unwrap();
    assert_eq!(
        l.header("aftercare.error"),
        "missing required attribute `subject`"
    );
    assert_eq!(
        stats
            .dead_letters
            .load(std::sync::atomic::Ordering::Relaxed),
        11
    );
    // Both bindings reached the store as customers with their receipts.
    assert_eq!(
        store.count("SELECT COUNT(*) FROM timeline WHERE action = 'email' AND step = 'receipt'"),
        2
    );
    assert_eq!(
        store.count("SELECT COUNT(*) FROM customers WHERE id IN ('ann', 'bob')"),
        2
    );
}

#[test]
fn a_broker_outage_and_a_restart_lose_nothing_and_apply_each_event_once() {
    let kafka = cluster(3);
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seqs = sequences_dir("outage", &[("thanks.yaml", THANKS)]);
    let cfg = config(
        &brokers,
        "outage-test",
        &store.url,
        &seqs,
        &seqs.join("mail"),
    );
    let p = producer(&brokers);
    let publish = |range: std::ops::Range<usize>| orders(&p, range);

    let first = start(cfg.clone());
    publish(0..100);
    flush(&p);
    let applied = || store.count("SELECT COUNT(*) FROM processed_events");
    wait_until(60, "100 events applied", || applied() == 100);
    // Every broker down while more events are produced and consumed.
    for b in 1..=3 {
        kafka.broker_down(b).unwrap();
    }
    publish(100..200);
    std::thread::sleep(std::time::Duration::from_secs(3)); // the outage's length, not a synchronisation
    for b in 1..=3 {
        kafka.broker_up(b).unwrap();
    }
    flush(&p);
    wait_until(90, "200 events applied after the outage", || {
        applied() == 200
    });
    first.stop();

    // A new instance in the same group carries on from the committed offsets.
    let second = start(cfg);
    publish(200..250);
    flush(&p);
    wait_until(90, "250 events applied after the restart", || {
        applied() == 250
    });
    second.stop();

    entered_once_each(&store, 250);
    assert_eq!(
        store.count("SELECT COUNT(*) FROM outbox WHERE step = 'receipt'"),
        250
    );
}

#[test]
fn two_instances_share_the_partitions_as_one_joins_and_leaves_and_apply_each_event_once() {
    let kafka = cluster(1);
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::postgres();
    let seqs = sequences_dir("rebalance", &[("thanks.yaml", THANKS)]);
    let cfg = config(
        &brokers,
        "rebalance-test",
        &store.url,
        &seqs,
        &seqs.join("mail"),
    );
    let p = producer(&brokers);
    let publish = |range: std::ops::Range<usize>| {
        orders(&p, range);
        flush(&p);
    };
    let applied = || store.count("SELECT COUNT(*) FROM processed_events");
    let a = start(cfg.clone());
    publish(0..150);
    wait_until(60, "the first instance to apply events", || applied() >= 1);
    // A second member joins: the group rebalances while events keep coming, until it has
    // taken partitions and applied some of them.
    let b = start(cfg);
    let mut next = 150;
    let b_applied = || b.stats.events.load(std::sync::atomic::Ordering::Relaxed);
    // Events keep coming until it has (a slow join must still find work to take).
    wait_until(90, "the second instance to take partitions", || {
        publish(next..next + 10);
        next += 10;
        b_applied() > 0
    });
    let total = next.max(300);
    publish(next..total);
    wait_until(90, "every event applied across both instances", || {
        applied() == total as i64
    });
    // The second instance leaves mid-stream (stopped as by SIGTERM): its partitions go back to
    // the first, which applies what comes next and nothing twice.
    publish(total..total + 50);
    let sb = b.stop();
    publish(total + 50..total + 150);
    let total = total + 150;
    wait_until(
        90,
        "every event applied after the second instance left",
        || applied() == total as i64,
    );
    let sa = a.stop();
    let events =
        |s: &aftercare::service::Stats| s.events.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        events(&sa) + events(&sb),
        total as u64,
        "each event applied by exactly one instance"
    );
    entered_once_each(&store, total as i64);
}

const WAITING: &str = "name: flow\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: later\n    wait: 6s\n    email: { template: t/a }\n";

/// The emails written by the file transport, by recipient.
fn mails_to(dir: &std::path::Path, customer: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let to = format!("To: {customer}@example.com");
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|m| m.lines().any(|l| l == to))
        .collect()
}

/// A template renamed (the sequence edited to send the new name) while a journey waits: the
/// reload is a new version, and the waiting journey's email is rendered from the template it
/// started with, which the folder no longer has; a journey started after it sends the new one.
#[test]
fn a_template_renamed_during_a_wait_is_sent_from_the_version_the_journey_started_on() {
    for store in TestStore::both() {
        // A topic of its own: the second store must not see the first one's orders.
        let kafka = cluster(1);
        let brokers = kafka.bootstrap_servers();
        let name = if store.url.starts_with("sqlite") {
            "sqlite"
        } else {
            "pg"
        };
        let before = sequences_dir(&format!("rename-a-{name}"), &[("flow.yaml", WAITING)]);
        std::fs::write(
            before.join("templates/t/a.subject.j2"),
            "A for {{ customer.email }}",
        )
        .unwrap();
        let after = sequences_dir(
            &format!("rename-b-{name}"),
            &[
                ("flow.yaml", &WAITING.replace("t/a", "t/z")),
                ("templates/t/z.subject.j2", "Z for {{ customer.email }}"),
                ("templates/t/z.html.j2", "<p>z</p>"),
            ],
        );
        for part in ["subject", "html"] {
            std::fs::remove_file(after.join(format!("templates/t/a.{part}.j2"))).unwrap();
        }
        // The folder the service watches is a link, swapped in one step: it sees either folder
        // whole, never a mix.
        let link = before.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&before, &link).unwrap();
        let mail = before.join("mail");
        let mut cfg = config(
            &brokers,
            &format!("rename-{name}"),
            &store.url,
            &link,
            &mail,
        );
        cfg.sequences.watch_interval = "1s".into();
        let service = start(cfg);
        let p = producer(&brokers);
        send(&p, "orders", "ann", placed("ann", "o1").as_bytes(), &[]);
        flush(&p);
        let entered = |c: &str| {
            store.count(&format!(
                "SELECT COUNT(*) FROM timeline WHERE customer = '{c}' AND action = 'enter'"
            ))
        };
        wait_until(60, "ann's journey", || entered("ann") == 1);

        let swap = before.with_extension("swap");
        std::os::unix::fs::symlink(&after, &swap).unwrap();
        std::fs::rename(&swap, &link).unwrap();
        let metrics = service.stats.metrics.clone();
        let applied = || {
            metrics
                .reloads
                .get_or_create(&aftercare::service::metrics::OutcomeLabels { outcome: "applied" })
                .get()
        };
        wait_until(30, "the renamed template reloaded", || applied() == 1);
        assert!(
            mails_to(&mail, "ann").is_empty(),
            "ann's email went out before the reload: the wait is too short for this machine"
        );
        send(&p, "orders", "bob", placed("bob", "o2").as_bytes(), &[]);
        flush(&p);
        wait_until(60, "both emails", || {
            mails_to(&mail, "ann").len() == 1 && mails_to(&mail, "bob").len() == 1
        });
        service.stop();

        let ann = &mails_to(&mail, "ann")[0];
        assert!(ann.contains("Subject: A for ann@example.com"), "{ann}");
        assert!(ann.contains("<p>a</p>"), "{ann}");
        let bob = &mails_to(&mail, "bob")[0];
        assert!(bob.contains("Subject: Z for bob@example.com"), "{bob}");
        assert!(bob.contains("<p>z</p>"), "{bob}");
        // The subjects decided are those sent.
        let emails = |c: &str, subject: &str| {
            store.count(&format!(
                "SELECT COUNT(*) FROM timeline WHERE action = 'email' AND customer = '{c}' AND subject LIKE '{subject}'"
            ))
        };
        assert_eq!(
            (
                emails("ann", "A for ann@example.com"),
                emails("bob", "Z for bob@example.com")
            ),
            (1, 1),
            "{}",
            store.url
        );
        assert_eq!(applied(), 1, "{}", store.url);
        let _ = std::fs::remove_file(&link);
    }
}
