//! Hostile input (SPEC §7), one test per class, in the users' terms: the bad thing goes in,
//! the clear error or the dead letter comes out, and the next good event is still applied.
//! Against the real parts: tansu where the broker matters (it takes a 2 MB message), SQLite
//! and PostgreSQL, the `aftercare` binary.

mod common;

use std::path::Path;
use std::sync::Arc;

use aftercare::engine::{Engine, Policy};
use aftercare::event::Event;
use aftercare::service::Stats;
use aftercare::service::apply::Applier;
use aftercare::service::ingest::{Ingest, Settled};
use aftercare::service::kafka::Batch;
use aftercare::store::{DeadLetterQuery, StoredDeadLetter};
use common::http::{get, sample};
use common::scratch;
use common::service::{
    config, flush, producer, read_topic, send, sequences_dir, start, wait_until,
};
use common::stores::TestStore;
use common::tansu::{Tansu, aftercare, publish};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use serde_json::{Value, json};

const RECEIPT: &str = "name: receipt\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/a }\n";

fn placed(customer: &str, order: &str, total: Value) -> String {
    json!({"specversion": "1.0", "id": format!("p-{order}"), "source": "/shop", "type": "order.placed",
        "time": aftercare::time::rfc3339(chrono::Utc::now()), "subject": customer,
        "data": {"order_id": order, "total": total, "currency": "EUR",
                 "items": [{"sku": "cam-1", "name": "Camera", "category": "camera", "quantity": 1, "unit_price": "1.00"}],
                 "customer": {"email": format!("{customer}@example.com"), "name": customer}}})
    .to_string()
}

fn mock() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let c = MockCluster::new(1).unwrap();
    for t in ["orders", "support", "aftercare.dlq"] {
        c.create_topic(t, 3, 1).unwrap();
    }
    c
}

fn dead_letters(store: &TestStore) -> Vec<StoredDeadLetter> {
    let mut s = store.open();
    let mut all = s.dead_letters(&DeadLetterQuery::default()).unwrap();
    all.reverse();
    all
}

/// Emails written by the file transport (not its temporary files).
fn emails(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    })
}

/// Where the in-process service's HTTP server listens, once it does.
fn http(service: &common::service::Running) -> std::net::SocketAddr {
    wait_until(30, "the HTTP server to listen", || {
        service.stats.http_addr.get().is_some()
    });
    *service.stats.http_addr.get().unwrap()
}

/// A 2 MB message is over `kafka.max_event_bytes` and over what the dead-letter topic takes:
/// it is dead-lettered with its value cut to `kafka.dlq_max_bytes`, kept whole in the store,
/// and the order after it is mailed. (It once stopped ingest for good.)
#[test]
fn a_two_megabyte_message_is_dead_lettered_cut_short_and_the_next_order_is_mailed() {
    let kafka = Tansu::start(&["orders", "support", "aftercare.dlq"]);
    let store = TestStore::sqlite();
    let seqs = sequences_dir("big", &[("receipt.yaml", RECEIPT)]);
    let mail = scratch("big").join("mail");
    let service = start(config(&kafka.brokers, "big", &store.url, &seqs, &mail));
    let p = producer(&kafka.brokers);
    let big = format!("{{\"junk\":\"{}\"}}", "x".repeat(2_000_000 - 11));
    assert_eq!(big.len(), 2_000_000);
    send(
        &p,
        "support",
        "big",
        big.as_bytes(),
        &[("trace", "keep-me")],
    );
    send(
        &p,
        "orders",
        "ann",
        placed("ann", "o1", json!("10.00")).as_bytes(),
        &[],
    );
    flush(&p);

    let letters = read_topic(&kafka.brokers, "aftercare.dlq", 1);
    wait_until(60, "the order after it mailed", || emails(&mail) == 1);
    let l = &letters[0];
    assert_eq!(
        l.header("aftercare.error"),
        "message is 2000000 bytes, over the 1048576-byte limit"
    );
    assert_eq!(l.header("aftercare.truncated"), "true");
    assert_eq!(l.header("aftercare.original.size"), "2000000");
    assert_eq!(l.header("aftercare.source.topic"), "support");
    assert_eq!(l.header("trace"), "keep-me");
    assert_eq!(l.value.len(), 900_000);
    assert_eq!(&l.value[..], &big.as_bytes()[..900_000]);
    wait_until(30, "its publication recorded", || {
        dead_letters(&store)
            .first()
            .is_some_and(|d| d.state() == "truncated")
    });
    let stored = dead_letters(&store);
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].letter.value,
        big.as_bytes(),
        "the store keeps it whole"
    );
    assert_eq!(stored[0].letter.class, "too_large");
    service.stop();
}

fn message(topic: &str, offset: i64, key: &str, payload: &[u8]) -> OwnedMessage {
    OwnedMessage::new(
        Some(payload.to_vec()),
        Some(key.as_bytes().to_vec()),
        topic.to_string(),
        rdkafka::Timestamp::NotAvailable,
        0,
        offset,
        None,
    )
}

/// What a message decodes to, as the poll thread hands it over.
fn batch(
    messages: Vec<OwnedMessage>,
    decoded: Vec<Result<Arc<Event>, aftercare::event::EventError>>,
) -> Batch {
    let bytes = messages
        .iter()
        .map(|m| rdkafka::Message::payload(m).map_or(0, <[u8]>::len))
        .sum();
    Batch {
        messages,
        decoded,
        bytes,
    }
}

/// A value the store refuses (a NUL byte in a customer id, which PostgreSQL cannot hold in
/// text) fails the batch's transaction: the batch is split until that event is alone, the
/// event is dead-lettered with PostgreSQL's SQLSTATE and message, and every other event of
/// the batch is applied. The parser refuses such ids first; this is the net beneath it.
#[test]
fn an_event_postgresql_refuses_is_dead_lettered_alone_with_its_sqlstate_and_the_batch_applied() {
    let store = TestStore::postgres();
    let seqs = sequences_dir("refused", &[("receipt.yaml", RECEIPT)]);
    let catalog = aftercare::service::load_catalog(&seqs).unwrap();
    let mut applier = Applier::new(Engine::new(Arc::new(catalog), Policy::default()));
    let mut db = store.open();
    let stats = Stats::default();
    let stop = aftercare::service::Shutdown::new();
    let mut messages = Vec::new();
    let mut decoded = Vec::new();
    for i in 0..9 {
        let text = placed(&format!("c{i}"), &format!("o{i}"), json!("5.00"));
        let mut ev = Event::from_structured(text.as_bytes()).unwrap();
        if i == 6 {
            ev.subject = "c\u{0}6".into();
        }
        messages.push(message("orders", i, &format!("c{i}"), text.as_bytes()));
        decoded.push(Ok(Arc::new(ev)));
    }
    let mut ingest = Ingest {
        store: &mut *db,
        applier: &mut applier,
        stats: &stats,
        stop: &stop,
    };
    assert_eq!(ingest.batch(&batch(messages, decoded)), Settled::Done);
    assert_eq!(
        store.count("SELECT COUNT(*) FROM customers WHERE state <> ''"),
        8
    );
    assert_eq!(
        store.count("SELECT COUNT(*) FROM timeline WHERE action = 'email'"),
        8
    );
    let letters = dead_letters(&store);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].letter.offset, 6);
    assert_eq!(letters[0].letter.class, "store_refused");
    assert_eq!(
        letters[0].letter.reason,
        "the store refused the event: postgres: 22021 invalid byte sequence for encoding \"UTF8\": 0x00"
    );
    // Not marked processed: a replay once it is mended is applied.
    assert_eq!(store.count("SELECT COUNT(*) FROM processed_events"), 8);
    assert!(stats.health.problems().is_empty());
}

/// Through the parser, the same event never reaches the store: its id is refused, in either
/// binding, and the events around it are applied (PostgreSQL, the librdkafka mock broker).
#[test]
fn control_characters_and_long_identifiers_are_dead_lettered_by_the_parser() {
    let kafka = mock();
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::postgres();
    let seqs = sequences_dir("ids", &[("receipt.yaml", RECEIPT)]);
    let mail = scratch("ids").join("mail");
    let service = start(config(&brokers, "ids", &store.url, &seqs, &mail));
    let p = producer(&brokers);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&placed("x", "ox", json!(1))).unwrap();
        f(&mut v);
        v.to_string()
    };
    let poison = [
        ("nul", with(&|v| v["subject"] = json!("victim\u{0}all"))),
        ("newline", with(&|v| v["subject"] = json!("victim\nall"))),
        ("long", with(&|v| v["id"] = json!("i".repeat(10 * 1024)))),
        (
            "sku",
            with(&|v| v["data"]["items"][0]["sku"] = json!("a\u{1b}[31m")),
        ),
        (
            "name",
            with(&|v| v["data"]["customer"]["name"] = json!("A\u{0}")),
        ),
    ];
    send(
        &p,
        "orders",
        "ann",
        placed("ann", "o1", json!(1)).as_bytes(),
        &[],
    );
    for (key, value) in &poison {
        send(&p, "orders", key, value.as_bytes(), &[]);
    }
    let h = [
        ("ce_specversion", "1.0"),
        ("ce_id", "b1"),
        ("ce_source", "/shop"),
        ("ce_type", "order.delivered"),
        ("ce_time", "2024-01-01T00:00:00Z"),
        ("ce_subject", "bob\u{0}"),
    ];
    send(&p, "orders", "binary", br#"{"order_id":"o1"}"#, &h);
    send(
        &p,
        "orders",
        "bob",
        placed("bob", "o2", json!(2)).as_bytes(),
        &[],
    );
    flush(&p);
    let letters = read_topic(&brokers, "aftercare.dlq", poison.len() + 1);
    wait_until(30, "both good orders mailed", || emails(&mail) == 2);
    service.stop();
    let reason = |key: &str| {
        letters
            .iter()
            .find(|l| l.key.as_deref() == Some(key.as_bytes()))
            .map(|l| l.header("aftercare.error").to_string())
            .unwrap_or_default()
    };
    let ctl = "identifiers may not contain control characters";
    assert_eq!(
        reason("nul"),
        format!("attribute `subject` contains the control character U+0000 at byte 6; {ctl}")
    );
    assert_eq!(
        reason("newline"),
        format!("attribute `subject` contains the control character U+000A at byte 6; {ctl}")
    );
    assert_eq!(
        reason("long"),
        "attribute `id` is 10240 bytes; identifiers are at most 256 bytes"
    );
    assert_eq!(
        reason("sku"),
        format!("`data.items[0].sku` contains the control character U+001B at byte 1; {ctl}")
    );
    assert_eq!(
        reason("name"),
        "`data.customer.name` contains a NUL character (U+0000)"
    );
    assert_eq!(
        reason("binary"),
        format!("attribute `subject` contains the control character U+0000 at byte 3; {ctl}")
    );
    assert_eq!(
        store.count("SELECT COUNT(*) FROM customers WHERE state <> ''"),
        2
    );
}

/// A dead letter whose publication fails after its batch committed (here: the broker refuses
/// the dead-letter topic) is not lost: it waits in the store, `/readyz` says why, the events
/// after it are applied, and it is published once the topic takes it.
#[test]
fn a_dead_letter_the_topic_refuses_waits_in_the_store_and_readyz_says_why() {
    use rdkafka::types::RDKafkaRespErr;
    let kafka = mock();
    let brokers = kafka.bootstrap_servers();
    kafka
        .topic_error(
            "aftercare.dlq",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        )
        .unwrap();
    let store = TestStore::sqlite();
    let seqs = sequences_dir("dlqdown", &[("receipt.yaml", RECEIPT)]);
    let mail = scratch("dlqdown").join("mail");
    let service = start(config(&brokers, "dlqdown", &store.url, &seqs, &mail));
    let addr = http(&service);
    let p = producer(&brokers);
    send(&p, "orders", "bad", b"{not json", &[]);
    send(
        &p,
        "orders",
        "ann",
        placed("ann", "o1", json!(1)).as_bytes(),
        &[],
    );
    flush(&p);
    wait_until(30, "the order after it mailed", || emails(&mail) == 1);
    let mut body = String::new();
    wait_until(60, "/readyz to say why", || {
        let (status, b) = get(addr, "/readyz", None);
        body = b;
        status == 503 && body.contains("dead-letters: dead-letter topic aftercare.dlq:")
    });
    assert!(body.contains("uthoriz"), "{body}");
    let (_, metrics) = get(addr, "/metrics", None);
    assert_eq!(
        sample(
            &metrics,
            "aftercare_unavailable{component=\"dead-letters\"}"
        ),
        Some(1.0)
    );
    let pending = dead_letters(&store);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].state(), "pending");

    // The topic takes writes again: the letter recorded before is published, whole, with
    // its reason, once.
    kafka
        .topic_error("aftercare.dlq", RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    let letters = read_topic(&brokers, "aftercare.dlq", 1);
    assert_eq!(letters[0].value, b"{not json");
    assert_eq!(
        letters[0].header("aftercare.error"),
        "not valid JSON: key must be a string at line 1 column 2"
    );
    wait_until(30, "its publication recorded", || {
        dead_letters(&store)[0].state() == "published"
    });
    wait_until(30, "/readyz ready again", || {
        get(addr, "/readyz", None).0 == 200
    });
    service.stop();
}

/// A store that is busy (another process holds SQLite's write lock) is transient: ingest
/// retries with backoff, `/readyz` answers 503 with the store's error and code while it
/// lasts, and the event is applied once the lock is gone.
#[test]
fn a_transient_store_error_shows_in_readyz_until_it_passes_and_loses_nothing() {
    let kafka = mock();
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seqs = sequences_dir("locked", &[("receipt.yaml", RECEIPT)]);
    let mail = scratch("locked").join("mail");
    let service = start(config(&brokers, "locked", &store.url, &seqs, &mail));
    let addr = http(&service);
    wait_until(30, "ready", || get(addr, "/readyz", None).0 == 200);
    let lock = rusqlite::Connection::open(store.url.trim_start_matches("sqlite://")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let p = producer(&brokers);
    send(
        &p,
        "orders",
        "ann",
        placed("ann", "o1", json!(1)).as_bytes(),
        &[],
    );
    flush(&p);
    let mut body = String::new();
    wait_until(60, "/readyz to report the lock", || {
        let (status, b) = get(addr, "/readyz", None);
        body = b;
        status == 503 && body.contains("ingest: sqlite: database is locked (code 5)")
    });
    assert_eq!(emails(&mail), 0);
    let (_, metrics) = get(addr, "/metrics", None);
    assert!(
        sample(
            &metrics,
            "aftercare_transient_errors_total{component=\"ingest\"}"
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    lock.execute_batch("ROLLBACK").unwrap();
    wait_until(30, "the order mailed", || emails(&mail) == 1);
    wait_until(30, "/readyz ready again", || {
        get(addr, "/readyz", None).0 == 200
    });
    service.stop();
}

/// Amounts are exact decimals: one at the edge of the old float store is kept to the cent and
/// the customer stays readable (their next event is applied and mailed); one past 18
/// significant digits or 10^18 is dead-lettered with the reason.
#[test]
fn amounts_are_exact_to_the_edge_and_refused_past_it() {
    for store in TestStore::both() {
        let kafka = mock();
        let brokers = kafka.bootstrap_servers();
        let seqs = sequences_dir("money", &[("receipt.yaml", RECEIPT)]);
        let mail = scratch("money").join("mail");
        let _ = std::fs::remove_dir_all(&mail);
        let service = start(config(
            &brokers,
            &format!("money-{}", store.url.len()),
            &store.url,
            &seqs,
            &mail,
        ));
        let p = producer(&brokers);
        let topic = "orders";
        send(
            &p,
            topic,
            "ann",
            placed("ann", "o1", json!("922337203685477.58")).as_bytes(),
            &[],
        );
        let huge = placed("bob", "o2", json!(0)).replace("\"total\":0", "\"total\":1e30");
        send(&p, topic, "huge", huge.as_bytes(), &[]);
        let precise = placed("cat", "o3", json!("1234567890.1234567891"));
        send(&p, topic, "precise", precise.as_bytes(), &[]);
        send(
            &p,
            topic,
            "ann",
            placed("ann", "o4", json!("0.01")).as_bytes(),
            &[],
        );
        flush(&p);
        wait_until(30, "both of ann's orders mailed", || emails(&mail) == 2);
        wait_until(30, "two dead letters", || dead_letters(&store).len() == 2);
        service.stop();
        let letters = dead_letters(&store);
        assert_eq!(
            letters[0].letter.reason,
            "`data.total` is out of range: amounts are below 10^18"
        );
        assert_eq!(
            letters[1].letter.reason,
            "`data.total` has 20 significant digits; amounts have at most 18"
        );
        let mut db = store.open();
        let ann = db.load("ann").unwrap().unwrap();
        let (profile, _) = aftercare::store::record::profile_and_orders(&ann).unwrap();
        assert_eq!(profile.total_spent.to_string(), "922337203685477.59");
        assert!(
            ann.state.contains("\"total_spent\":\"922337203685477.59\""),
            "{}",
            ann.state
        );
    }
}

/// A store written when amounts were floats is migrated on open: every amount becomes a
/// decimal string, and a customer whose float no longer fitted is readable again.
#[test]
fn a_store_with_float_amounts_is_migrated_to_decimals() {
    let dir = scratch("floats");
    let path = dir.join("old.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    // Schema 3 as it shipped (frozen), with a customer as the float store wrote it.
    conn.execute_batch(
        "CREATE TABLE processed_events (source TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL,
             PRIMARY KEY (source, id)) WITHOUT ROWID;
         CREATE TABLE customers (id TEXT PRIMARY KEY, state TEXT NOT NULL, next_due INTEGER, updated_at INTEGER NOT NULL);
         CREATE TABLE timeline (seq INTEGER PRIMARY KEY, customer TEXT NOT NULL, at INTEGER NOT NULL, journey TEXT NOT NULL,
             sequence TEXT NOT NULL, version TEXT NOT NULL, step TEXT, action TEXT NOT NULL, reason TEXT NOT NULL, subject TEXT);
         CREATE TABLE outbox (key TEXT PRIMARY KEY, customer TEXT NOT NULL, journey TEXT NOT NULL, sequence TEXT NOT NULL,
             version TEXT NOT NULL, step TEXT NOT NULL, order_id TEXT, template TEXT NOT NULL, category TEXT NOT NULL,
             transactional INTEGER NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL,
             attempts INTEGER NOT NULL DEFAULT 0, sent_at INTEGER, message_id TEXT, last_error TEXT, claimed_until INTEGER);
         CREATE TABLE sequence_versions (name TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL, source TEXT NOT NULL,
             first_seen INTEGER NOT NULL, PRIMARY KEY (name, version));
         PRAGMA user_version = 3;",
    )
    .unwrap();
    let state = r#"{"profile":{"id":"ann","email":"ann@example.com","orders_count":2,"total_spent":922337203685477.6,"skus":["cam-1"],"categories":["camera"]},"orders":[{"id":"o1","items":[{"sku":"cam-1","name":"Camera","category":"camera","quantity":3,"unit_price":11.77}],"total":35.31,"currency":"USD","status":"placed","placed_at":"2024-01-01T00:00:00Z","shipped_at":null,"delivered_at":null,"shipping":null,"refunded":0.1,"enrolled":[]}],"journeys":[],"goals":[],"finished":[]}"#;
    conn.execute(
        "INSERT INTO customers (id, state, next_due, updated_at) VALUES ('ann', ?1, NULL, 0)",
        [state],
    )
    .unwrap();
    drop(conn);
    let url = format!("sqlite://{}", path.display());
    let mut db = aftercare::store::open(&url).unwrap();
    let ann = db.load("ann").unwrap().unwrap();
    for decimal in [
        "\"total_spent\":\"922337203685477.60\"",
        "\"unit_price\":\"11.77\"",
        "\"total\":\"35.31\"",
        "\"refunded\":\"0.10\"",
    ] {
        assert!(
            ann.state.contains(decimal),
            "{decimal} not in {}",
            ann.state
        );
    }
    let (profile, orders) = aftercare::store::record::profile_and_orders(&ann).unwrap();
    assert_eq!(profile.total_spent.to_string(), "922337203685477.60");
    assert_eq!(orders[0].items[0].unit_price.to_string(), "11.77");
}

fn validate(files: &[(&str, &[u8])]) -> (bool, String) {
    let dir = scratch(&format!("validate-{}", files.len()));
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    for (path, text) in common::default_templates() {
        let p = dir.join("templates").join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if !p.exists() {
            std::fs::write(p, text).unwrap();
        }
    }
    let out = aftercare().arg("validate").arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace(&format!("{}/", dir.display()), "");
    (out.status.success(), text)
}

fn alias_bomb() -> String {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(",");
        bomb.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    bomb
}

/// Sequence files that would exhaust the loader are refused with `file:line:column` and a
/// hint, whatever their shape: an alias bomb, nesting 50,000 deep in block or flow style, a
/// file over the size limit, text that is not UTF-8.
#[test]
fn sequence_files_past_the_limits_are_refused_with_their_position() {
    let bomb = alias_bomb();
    assert!(bomb.len() <= 640, "{} bytes", bomb.len());
    // `- ` nested 50,000 deep after an `exit:` (the watch thread once overflowed its stack).
    let deep_block = format!(
        "name: deep\ntrigger: {{ event: order.placed }}\nsteps:\n  - id: a\n    exit:\n      {}\n",
        "- ".repeat(50_000)
    );
    let deep_flow = format!(
        "name: flow\nsteps: {}{}\n",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let big = format!("name: big\n# {}\n", "x".repeat(1 << 20));
    let mut latin1 = b"name: caf".to_vec();
    latin1.extend([0xe9, b'\n']);
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "bomb.yaml",
            bomb.as_bytes(),
            "bomb.yaml:4:4: YAML syntax error: aliases expand to more than 10000 nodes\n  hint: write the repeated part out, or alias smaller pieces (sequences.max_alias_nodes)",
        ),
        (
            "deep.yaml",
            deep_block.as_bytes(),
            "deep.yaml:6:129: YAML syntax error: nested deeper than 64 levels of mappings and lists\n  hint: a sequence file needs a handful of levels; look for a runaway `- ` or `[` (sequences.max_depth)",
        ),
        ("flow.yaml", deep_flow.as_bytes(), "flow.yaml:2:"),
        (
            "big.yaml",
            big.as_bytes(),
            "big.yaml:1:1: the file is over the 1048576-byte limit\n  hint: split it into smaller files (sequences.max_file_bytes)",
        ),
        (
            "latin1.yaml",
            &latin1,
            "latin1.yaml:1:10: the file is not UTF-8 text: a byte here is no UTF-8 character",
        ),
    ];
    for (name, text, expected) in cases {
        let (ok, out) = validate(&[(name, text)]);
        assert!(!ok, "{name} passed");
        assert!(
            out.contains(expected),
            "{name}: expected\n{expected}\nin\n{out}"
        );
    }
    // An expression of 8,000 terms once overflowed the watch thread's stack; 80,000 distinct
    // keys took 48 s and printed 80,000 lines.
    let long = format!(
        "name: long\ntrigger: {{ event: order.placed, when: \"{} > 0\" }}\nsteps:\n  - id: a\n    exit: true\n",
        vec!["1"; 8000].join("+")
    );
    let (ok, out) = validate(&[("long.yaml", long.as_bytes())]);
    assert!(!ok);
    assert!(out.contains("long.yaml:2:39: expression `1+1+1+"), "{out}");
    assert!(
        out.contains("`: it is 16003 bytes long; an expression is at most 2048"),
        "{out}"
    );
    let keys: String = (0..80_000).map(|i| format!("k{i:07}: 1\n")).collect();
    let (ok, out) = validate(&[("keys.yaml", keys.as_bytes())]);
    assert!(!ok);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("keys.yaml:")).count(),
        101,
        "{out}"
    );
    assert!(
        out.contains("… and 79902 more problem(s) in this file"),
        "{out}"
    );
    let steps: String = (0..1001)
        .map(|i| format!("  - id: s{i}\n    exit: true\n"))
        .collect();
    let many = format!("name: many\ntrigger: {{ event: order.placed }}\nsteps:\n{steps}");
    let (ok, out) = validate(&[("many.yaml", many.as_bytes())]);
    assert!(!ok);
    assert!(
        out.contains("many.yaml:4:3: 1001 steps; a sequence has at most 1000"),
        "{out}"
    );
}

/// Templates that would never finish, include themselves or recurse without end, and
/// sequences that start each other without waiting, are refused by `validate` naming the
/// file; they would otherwise hang a preview or loop one order into thousands of decisions.
#[test]
fn templates_over_budget_and_start_cycles_are_refused_naming_the_file() {
    let seq = "name: s\ntrigger: { event: order.placed }\nsteps:\n  - id: a\n    email: { template: bad/x }\n";
    for (body, message) in [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
                .to_string(),
            "templates/bad/x.html.j2:1:1: does not finish within the template budget (sequences.template_fuel): engine ran out of fuel",
        ),
        (
            "{% include \"bad/x.html.j2\" %}".to_string(),
            "templates/bad/x.html.j2:1:1: recurses deeper than sequences.template_recursion",
        ),
        (
            "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}".to_string(),
            "templates/bad/x.html.j2:1:1: recurses deeper than sequences.template_recursion",
        ),
        (
            "{{ 'x' * 1000000000 }}".to_string(),
            "templates/bad/x.html.j2:1:1: does not finish within the template budget",
        ),
        (
            "{% include \"../../../etc/passwd\" %}".to_string(),
            "templates/bad/x.html.j2:1:1: includes a template that does not exist",
        ),
        (
            "{% extends \"bad/x.html.j2\" %}".to_string(),
            "templates/bad/x.html.j2:1:1: extends itself, directly or through another template",
        ),
        (
            "{{ customer.name | nosuchfilter }}".to_string(),
            "templates/bad/x.html.j2:1:1: uses a filter, test or function that does not exist",
        ),
        (
            format!("{{{{ {} }}}}", vec!["1"; 3000].join("+")),
            "templates/bad/x.html.j2:1:1: a tag of 6005 bytes; `{{ }}` and `{% %}` tags are at most 4096",
        ),
    ] {
        let body = body.as_str();
        let (ok, out) = validate(&[
            ("s.yaml", seq.as_bytes()),
            ("templates/bad/x.subject.j2", b"hi"),
            ("templates/bad/x.html.j2", body.as_bytes()),
        ]);
        assert!(!ok, "{body} passed");
        assert!(
            out.contains(message),
            "{body}: expected {message} in\n{out}"
        );
    }
    let a = "name: a\ntrigger: { event: order.placed }\njourney: per_order\nsteps:\n  - id: hand-over\n    start: b\n";
    let b = "name: b\ntrigger: { event: order.shipped }\njourney: per_order\nsteps:\n  - id: back\n    wait: 0s\n    start: a\n";
    let (ok, out) = validate(&[("a.yaml", a.as_bytes()), ("b.yaml", b.as_bytes())]);
    assert!(!ok);
    assert!(out.contains("a.yaml:6:12: `start` closes a cycle of sequences that start each other without waiting: a → b → a"), "{out}");
    assert!(out.contains("b.yaml:7:12: `start` closes a cycle of sequences that start each other without waiting: a → b → a"), "{out}");
    // With a wait in the loop it is a legitimate series.
    let b = b.replace("wait: 0s", "wait: 1d");
    let (ok, out) = validate(&[("a.yaml", a.as_bytes()), ("b.yaml", b.as_bytes())]);
    assert!(ok, "{out}");
}

/// What a folder can hold besides files: links that loop, links out of it, a FIFO. The
/// loader reads each directory once and only regular files inside the folder.
#[test]
fn links_and_special_files_in_a_sequences_folder_are_bounded_and_refused() {
    let seq = "name: s\ntrigger: { event: order.placed }\nsteps:\n  - id: a\n    email: { template: t/a }\n";
    let dir = scratch("links");
    std::fs::write(dir.join("s.yaml"), seq).unwrap();
    let t = dir.join("templates/t");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("a.subject.j2"), "hi").unwrap();
    std::fs::write(t.join("a.html.j2"), "<p>hi</p>").unwrap();
    for name in ["a", "b", "c"] {
        std::os::unix::fs::symlink(".", t.join(name)).unwrap();
    }
    std::os::unix::fs::symlink("/etc/hostname", t.join("leak.html.j2")).unwrap();
    let fifo = t.join("pipe.subject.j2");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = aftercare().arg("validate").arg(&dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace(&format!("{}/", dir.display()), "");
    assert!(!out.status.success());
    assert!(
        text.contains(
            "templates/t/leak.html.j2:1:1: a link to a file outside the sequences folder"
        ),
        "{text}"
    );
    assert!(
        text.contains("templates/t/pipe.subject.j2:1:1: not a regular file"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| !l.starts_with("  hint")).count(),
        2,
        "{text}"
    );
}

/// The watched folder takes the same files while `run` runs: each is refused, the watch
/// thread lives on, and the next event is applied on the last good version.
#[test]
fn a_running_engine_keeps_its_last_good_version_whatever_is_dropped_into_its_folder() {
    let kafka = mock();
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seqs = sequences_dir("watched", &[("receipt.yaml", RECEIPT)]);
    let mail = scratch("watched").join("mail");
    let mut cfg = config(&brokers, "watched", &store.url, &seqs, &mail);
    cfg.sequences.watch_interval = "1s".into();
    let service = start(cfg);
    let addr = http(&service);
    let refused = || {
        let (_, m) = get(addr, "/metrics", None);
        sample(&m, "aftercare_sequence_reloads_total{outcome=\"refused\"}").unwrap_or(0.0)
    };
    let deep = format!(
        "name: deep\nsteps:\n  - id: a\n    exit:\n      {}\n",
        "- ".repeat(50_000)
    );
    let files = [
        ("bomb.yaml", alias_bomb()),
        ("deep.yaml", deep),
        ("loop.yaml", "name: loop\ntrigger: { event: order.placed }\nsteps:\n  - id: again\n    start: loop\n".to_string()),
    ];
    let p = producer(&brokers);
    for (i, (name, text)) in files.iter().enumerate() {
        std::fs::write(seqs.join(name), text).unwrap();
        wait_until(30, &format!("{name} refused"), || {
            refused() >= (i + 1) as f64
        });
        std::fs::remove_file(seqs.join(name)).unwrap();
        let customer = format!("c{i}");
        send(
            &p,
            "orders",
            &customer,
            placed(&customer, &format!("o{i}"), json!(1)).as_bytes(),
            &[],
        );
        flush(&p);
        wait_until(30, "the next order mailed", || emails(&mail) == i + 1);
    }
    service.stop();
}

/// A template that fits its budget for the sample customer but not for a real one (an order
/// of 300 items) fails that one email, recorded as `failed` with the reason; the next
/// customer's email goes out.
#[test]
fn a_template_over_its_budget_at_send_time_fails_that_email_only() {
    let kafka = mock();
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seq = "name: list\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/list }\n";
    let seqs = sequences_dir("budget", &[("list.yaml", seq)]);
    std::fs::write(seqs.join("templates/t/list.subject.j2"), "Your order").unwrap();
    std::fs::write(
        seqs.join("templates/t/list.html.j2"),
        "{% for item in order.items %}{% for i in range(2000) %}<i>{{ item.name }}</i>{% endfor %}{% endfor %}",
    )
    .unwrap();
    let mail = scratch("budget").join("mail");
    let service = start(config(&brokers, "budget", &store.url, &seqs, &mail));
    let p = producer(&brokers);
    let mut big: Value = serde_json::from_str(&placed("ann", "o1", json!(1))).unwrap();
    big["data"]["items"] = Value::Array(
        (0..300)
            .map(|i| json!({"sku": format!("s{i}"), "name": "n", "category": "c", "quantity": 1, "unit_price": 1}))
            .collect(),
    );
    send(&p, "orders", "ann", big.to_string().as_bytes(), &[]);
    send(
        &p,
        "orders",
        "bob",
        placed("bob", "o2", json!(1)).as_bytes(),
        &[],
    );
    flush(&p);
    wait_until(30, "bob's email sent", || emails(&mail) == 1);
    wait_until(30, "ann's email recorded as failed", || {
        store.count("SELECT COUNT(*) FROM timeline WHERE customer = 'ann' AND action = 'failed'")
            == 1
    });
    service.stop();
    let reason =
        store.text("SELECT reason FROM timeline WHERE customer = 'ann' AND action = 'failed'");
    assert!(
        reason.contains("list.html.j2: engine ran out of fuel"),
        "{reason}"
    );
}

fn simulate(events: &[Value], args: &[&str]) -> (String, String) {
    let dir = scratch(&format!("sim-{}", args.len()));
    let seqs = sequences_dir(
        &format!("sim-{}", args.len()),
        &[(
            "late.yaml",
            "name: late\ncategory: transactional\ntrigger: { event: order.placed }\nsteps:\n  - id: soon\n    wait: 2h\n    email: { template: t/a }\n",
        )],
    );
    let file = dir.join("events.jsonl");
    std::fs::write(
        &file,
        events.iter().map(|e| format!("{e}\n")).collect::<String>(),
    )
    .unwrap();
    let out = aftercare()
        .args(["simulate", "--events"])
        .arg(&file)
        .arg("--sequences")
        .arg(&seqs)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Times stay inside what RFC 3339 writes: an event after 9999 is refused, and a wait that
/// would end after 9999-12-31T23:59:59Z never fires (the journey waits, due "never"), so no
/// line ever carries a five-digit year. `--threads` is capped at the cores.
#[test]
fn times_stay_in_the_years_1970_to_9999_and_threads_at_the_cores() {
    let mut ev: Value = serde_json::from_str(&placed("ann", "o1", json!(1))).unwrap();
    ev["time"] = json!("9999-12-31T23:00:00Z");
    let mut late: Value = ev.clone();
    late["id"] = json!("p-late");
    late["time"] = json!("+10000-01-03T23:59:59Z");
    let (out, err) = simulate(&[ev, late], &["--threads", "100000"]);
    assert!(!out.contains("+10000"), "{out}");
    assert!(
        out.contains("\"at\":\"9999-12-31T23:00:00Z\",\"customer\":\"ann\",\"sequence\":\"late\""),
        "{out}"
    );
    assert!(out.contains("\"action\":\"enter\""), "{out}");
    assert!(!out.contains("\"action\":\"email\""), "{out}");
    assert!(
        err.contains(
            "skipped: attribute `time` is not an RFC 3339 timestamp: `+10000-01-03T23:59:59Z`"
        ),
        "{err}"
    );
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(
        err.contains(&format!(
            "--threads 100000: using {cores}, the number of cores"
        )),
        "{err}"
    );
}

/// Every class of bad message, one of each (key, value, expected reason).
fn poison() -> Vec<(&'static str, Vec<u8>, String)> {
    let good = placed("x", "ox", json!("1.00"));
    let parsed: Value = serde_json::from_str(&good).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = parsed.clone();
        f(&mut v);
        v.to_string().into_bytes()
    };
    let big = format!("{{\"junk\":\"{}\"}}", "x".repeat(2_000_000 - 11)).into_bytes();
    let ctl = "identifiers may not contain control characters";
    let huge = good.replace("\"total\":\"1.00\"", "\"total\":1e30");
    let mut poison = common::malformed(&good);
    poison.extend([
        (
            "two-megabytes",
            big,
            "message is 2000000 bytes, over the 1048576-byte limit".into(),
        ),
        (
            "nul-subject",
            with(&|v| v["subject"] = json!("a\u{0}b")),
            format!("attribute `subject` contains the control character U+0000 at byte 1; {ctl}"),
        ),
        (
            "long-id",
            with(&|v| v["id"] = json!("i".repeat(10 * 1024))),
            "attribute `id` is 10240 bytes; identifiers are at most 256 bytes".into(),
        ),
        (
            "amount",
            huge.into_bytes(),
            "`data.total` is out of range: amounts are below 10^18".into(),
        ),
        // PostgreSQL's jsonb refuses \u0000 anywhere: in an attribute, key or value.
        (
            "nul-attribute",
            with(&|v| v["data"]["customer"]["attributes"] = json!({"tier": ["gold", "a\u{0}"]})),
            "`data.customer.attributes.tier[1]` contains a NUL character (U+0000)".into(),
        ),
        (
            "nul-referrer",
            with(&|v| v["data"]["referred_by"] = json!("ann\u{0}")),
            format!("`data.referred_by` contains the control character U+0000 at byte 3; {ctl}"),
        ),
    ]);
    poison
}

/// The fulfilment emails the good events call for: per order, the confirmation, and the
/// shipped and delivered notices when those events come (a cancelled order ends first).
/// The events come within seconds, so no `wait_for` times out.
fn fulfilment_expected(lines: &[String]) -> usize {
    let mut per_order: std::collections::BTreeMap<String, (bool, bool, bool, bool)> =
        Default::default();
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap();
        let Some(o) = v["data"]["order_id"].as_str() else {
            continue;
        };
        let e = per_order.entry(o.to_string()).or_default();
        match v["type"].as_str().unwrap() {
            "order.placed" => e.0 = true,
            "order.shipped" => e.1 = true,
            "order.delivered" => e.2 = true,
            "order.cancelled" => e.3 = true,
            _ => {}
        }
    }
    per_order
        .values()
        .filter(|e| e.0)
        .map(
            |&(_, shipped, delivered, cancelled)| match (cancelled, shipped, delivered) {
                (true, _, _) => 1,
                (false, true, true) => 3,
                (false, true, false) => 2,
                (false, false, _) => 1,
            },
        )
        .sum()
}

/// The headers of every `.eml` in `dir`: (journey, step) pairs.
fn sent(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or_default()
                .to_string()
        };
        out.push((header("X-Aftercare-Journey"), header("X-Aftercare-Step")));
    }
    out
}

/// SPEC §7's acceptance run: CDNOW's first 1,000 orders with every poison class mixed in,
/// through the `aftercare` binary on tansu, on SQLite and on PostgreSQL. Every fulfilment
/// email goes out exactly once, and exactly the bad messages are dead-lettered, each with
/// its reason.
#[test]
fn cdnow_with_every_poison_mails_each_fulfilment_email_once_and_dead_letters_exactly_the_bad() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/cdnow/CDNOW_master.txt"
    ))
    .unwrap();
    let rows = aftercare::cdnow::parse(&text).unwrap();
    let lines = aftercare::cdnow::events(&rows[..1000]);
    let expected = fulfilment_expected(&lines);
    let poison = poison();
    for store in TestStore::both() {
        let dir = scratch(&format!("acceptance-{}", &store.url[..5]));
        let kafka = Tansu::start(&["orders", "support", "aftercare.dlq"]);
        let seqs = Path::new(env!("CARGO_MANIFEST_DIR")).join("sequences");
        let config =
            common::tansu::write_config(&dir, &kafka.brokers, "acceptance", &store.url, &seqs);
        let mut run = common::tansu::Aftercare::run(&config, &[], &[]);
        let events = dir.join("events.jsonl");
        // Half the good events, the poison, the other half: bad messages sit between good ones.
        let half = lines.len() / 2;
        std::fs::write(
            &events,
            lines[..half]
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )
        .unwrap();
        publish(&config, &events);
        let p = producer(&kafka.brokers);
        for (key, value, _) in &poison {
            send(&p, "orders", key, value, &[]);
        }
        flush(&p);
        std::fs::write(
            &events,
            lines[half..]
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )
        .unwrap();
        publish(&config, &events);
        wait_until(180, "every good event applied", || {
            store.count("SELECT COUNT(*) FROM processed_events") == lines.len() as i64
        });
        wait_until(120, "every fulfilment email sent", || {
            sent(&dir.join("mail")).len() >= expected
        });
        let letters = read_topic(&kafka.brokers, "aftercare.dlq", poison.len());
        wait_until(60, "every dead letter published", || {
            dead_letters(&store)
                .iter()
                .all(|d| d.published_at.is_some())
        });
        let (_, log) = run.terminate();
        let emails = sent(&dir.join("mail"));
        let mut unique = emails.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(emails.len(), expected, "{}", store.url);
        assert_eq!(unique.len(), emails.len(), "an email was sent twice");
        assert!(emails.iter().all(|(j, s)| !j.is_empty() && !s.is_empty()));
        let stored = dead_letters(&store);
        assert_eq!(stored.len(), poison.len(), "dead letters in the store");
        for (key, value, reason) in &poison {
            let l = letters
                .iter()
                .find(|l| l.key.as_deref() == Some(key.as_bytes()))
                .unwrap_or_else(|| panic!("{key} not on the dead-letter topic"));
            assert_eq!(l.header("aftercare.error"), reason, "{key}");
            if value.len() > 900_000 {
                assert_eq!(l.header("aftercare.truncated"), "true");
                assert_eq!(l.value, value[..900_000]);
            } else {
                assert_eq!(&l.value, value, "{key}: value changed");
            }
            let s = stored
                .iter()
                .find(|d| d.letter.key.as_deref() == Some(key.as_bytes()))
                .unwrap();
            assert_eq!(&s.letter.value, value, "{key}: the store keeps it whole");
        }
        // Each was published once (tansu's watermarks count batches, not messages, so the
        // count comes from what aftercare says it published).
        let published: usize = log
            .lines()
            .filter(|l| l.contains("dead letters published"))
            .filter_map(|l| {
                l.split("published=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum();
        assert_eq!(published, poison.len(), "{log}");
        assert!(!log.contains("@example.com"), "an address in the log");
        println!(
            "{}: {} events, {expected} fulfilment emails each sent once, {} dead letters",
            &store.url[..store.url.find(':').unwrap_or(0)],
            lines.len(),
            poison.len()
        );
    }
}

/// Messages in memory are bounded in bytes, not only in count. While the store is locked (the
/// engine cannot apply anything), 400 messages of 875 KB (350 MB) arrive: the consumer takes
/// only what `kafka.buffer_bytes` (16 MiB here) allows and leaves the rest on the broker, and
/// resident memory stays near its idle size; once the store is free every message is applied,
/// the peak still bounded. Counting messages alone, 1,500 of them once took 5.4 GB; with
/// `RSS_BUFFER=1073741824` (as good as unbounded) this check takes 755 MiB and fails.
#[test]
fn messages_in_memory_are_bounded_in_bytes() {
    let dir = scratch("rss");
    let kafka = Tansu::start(&["orders", "support", "aftercare.dlq"]);
    let store = TestStore::sqlite();
    let seqs = sequences_dir("rss", &[("receipt.yaml", RECEIPT)]);
    let config = common::tansu::write_config(&dir, &kafka.brokers, "rss", &store.url, &seqs);
    let port = common::smtp::free_port();
    let buffer = std::env::var("RSS_BUFFER").unwrap_or("16777216".into());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[kafka]\n", &format!("[kafka]\nbuffer_bytes = {buffer}\n"))
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    std::fs::write(&config, text).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut run = common::tansu::Aftercare::run(&config, &[], &[]);
    let p = producer(&kafka.brokers);
    // One event applied first: the consumer has joined and the schema exists.
    send(
        &p,
        "orders",
        "first",
        placed("first", "o0", json!(1)).as_bytes(),
        &[],
    );
    flush(&p);
    wait_until(60, "the first event applied", || {
        store.count("SELECT COUNT(*) FROM processed_events") == 1
    });
    let idle = rss_mib(run.child.id(), "VmRSS:");
    let lock = rusqlite::Connection::open(store.url.trim_start_matches("sqlite://")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let n: i64 = 400;
    for i in 0..n {
        // A type no sequence knows, its data nowhere stored: only the buffers hold it.
        let v = json!({"specversion": "1.0", "id": format!("s{i}"), "source": "/catalog", "type": "catalog.synced",
            "time": aftercare::time::rfc3339(chrono::Utc::now()), "subject": format!("c{i}"),
            "data": {"blob": "b".repeat(875_000)}});
        send(
            &p,
            "orders",
            &format!("c{i}"),
            v.to_string().as_bytes(),
            &[],
        );
    }
    flush(&p);
    // The consumer has taken all it will take once its lag stops moving (statistics come
    // every 2 s).
    let lag = || {
        let (_, m) = get(addr, "/metrics", None);
        m.lines()
            .filter(|l| l.starts_with("aftercare_consumer_lag{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let mut seen = Vec::new();
    wait_until(120, "the consumer's lag to settle", || {
        seen.push(lag());
        std::thread::sleep(std::time::Duration::from_millis(500)); // sampling a gauge, not waiting for an effect
        seen.len() >= 10
            && seen[seen.len() - 10..]
                .iter()
                .all(|l| *l == seen[seen.len() - 1])
    });
    let held = rss_mib(run.child.id(), "VmRSS:");
    lock.execute_batch("ROLLBACK").unwrap();
    wait_until(300, "every event applied", || {
        store.count("SELECT COUNT(*) FROM processed_events") == n + 1
    });
    let peak = rss_mib(run.child.id(), "VmHWM:");
    run.terminate();
    println!(
        "buffer_bytes {buffer}: idle {idle:.1} MiB, {held:.1} MiB with the store locked and {n} messages waiting, peak {peak:.1} MiB"
    );
    assert!(
        held < idle + 64.0,
        "{held:.1} MiB with the store locked (idle {idle:.1})"
    );
    assert!(peak < 200.0, "peak RSS {peak:.1} MiB");
}

/// A line of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in MiB.
fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// The dead-letter workflow of docs/running.md, with the binary's commands: a customer whose
/// stored state cannot be read has its event dead-lettered (not marked processed); `list`
/// and `show` say why; once the state is mended, `replay` sends the message back to its topic
/// and it is applied, once; a malformed one replayed is dead-lettered again.
#[test]
fn dead_letters_are_listed_shown_and_replayed_through_the_normal_path() {
    let kafka = mock();
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seqs = sequences_dir("replay", &[("receipt.yaml", RECEIPT)]);
    let dir = scratch("replay");
    let mail = dir.join("mail");
    let config = common::tansu::write_config(&dir, &brokers, "replay", &store.url, &seqs);
    let service = start(config_of(&brokers, &store.url, &seqs, &mail));
    let p = producer(&brokers);
    send(
        &p,
        "orders",
        "ann",
        placed("ann", "o1", json!(1)).as_bytes(),
        &[],
    );
    flush(&p);
    wait_until(30, "ann's first order mailed", || emails(&mail) == 1);
    // Ann's stored state is damaged (a bad restore, say).
    let conn = rusqlite::Connection::open(store.url.trim_start_matches("sqlite://")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute(
        "UPDATE customers SET state = '{\"profile\":' WHERE id = 'ann'",
        [],
    )
    .unwrap();
    send(
        &p,
        "orders",
        "ann",
        placed("ann", "o2", json!(2)).as_bytes(),
        &[],
    );
    send(&p, "orders", "junk", b"{not json", &[("x-trace", "t1")]);
    flush(&p);
    wait_until(30, "two dead letters", || dead_letters(&store).len() == 2);
    let cli = |args: &[&str]| {
        let out = aftercare()
            .arg("dead-letters")
            .args(args)
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // On failure, what it said on stderr.
        let shown = if out.status.success() {
            text
        } else {
            format!("{text}{}", String::from_utf8_lossy(&out.stderr))
        };
        (out.status.success(), shown)
    };
    let (ok, list) = cli(&["list"]);
    assert!(ok, "{list}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    let line = |class: &str| {
        *lines
            .iter()
            .find(|l| l.contains(&format!("\t{class}\t")))
            .unwrap_or_else(|| panic!("no {class} in {list}"))
    };
    assert!(
        line("not_json").ends_with("\tnot valid JSON: key must be a string at line 1 column 2"),
        "{list}"
    );
    let id_of = |l: &str| l.split('\t').next().unwrap().to_string();
    assert!(
        line("customer_unreadable")
            .contains("\tthe customer's stored state cannot be read: EOF while parsing"),
        "{list}"
    );
    let unreadable = id_of(line("customer_unreadable"));
    let junk = id_of(line("not_json"));
    let (_, only) = cli(&["list", "--reason", "not_json"]);
    assert_eq!(only.lines().count(), 1);
    let (ok, shown) = cli(&["show", &junk]);
    assert!(ok);
    assert!(shown.contains("header:    x-trace: t1"), "{shown}");
    assert!(shown.contains("value:     9 bytes\n{not json"), "{shown}");
    // Mended (the row removed: the customer starts afresh), the event is replayed and applied.
    conn.execute("DELETE FROM customers WHERE id = 'ann'", [])
        .unwrap();
    let (ok, _) = cli(&["replay", &unreadable]);
    assert!(ok);
    wait_until(30, "ann's second order mailed", || emails(&mail) == 2);
    // Replaying everything: ann's is a duplicate now (no effect), the junk is dead-lettered again.
    let (ok, _) = cli(&["replay"]);
    assert!(ok);
    wait_until(30, "the junk dead-lettered again", || {
        dead_letters(&store).len() == 3
    });
    service.stop();
    assert_eq!(emails(&mail), 2);
    let all = dead_letters(&store);
    assert!(all[..2].iter().all(|d| d.replayed_at.is_some()));
    assert_eq!(all[2].letter.value, b"{not json");
    assert!(
        all[2]
            .letter
            .headers
            .iter()
            .any(|(k, v)| k == "aftercare.replay.of" && !v.is_empty()),
        "{:?}",
        all[2].letter.headers
    );
}

/// The in-process service's config, matching `write_config`'s file.
fn config_of(brokers: &str, store: &str, seqs: &Path, mail: &Path) -> aftercare::config::Config {
    config(brokers, "replay", store, seqs, mail)
}
