//! The durable stores, SQLite and PostgreSQL, through the same engine path `run` uses.

mod common;

use std::sync::Arc;

use aftercare::engine::{Engine, Policy};
use aftercare::event::Event;
use aftercare::mail::token::Signer;
use aftercare::service::apply::Applier;
use aftercare::store::{DeadLetter, Delivery, record};
use chrono::{DateTime, Duration, Utc};
use common::stores::TestStore;
use serde_json::json;

const SEQ_V1: &str = "name: thanks\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/a }\n  - id: followup\n    wait: 1h\n    email: { template: t/b }\n";
const SEQ_V2: &str = "name: thanks\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/c }\n  - id: survey\n    wait: 2h\n    email: { template: t/d }\n";

const LEASE: Duration = Duration::minutes(5);

fn t0() -> DateTime<Utc> {
    common::time("+0s")
}

fn applier(sequence: &str) -> Applier {
    let catalog = common::catalog(&[("thanks.yaml", sequence)], common::default_templates());
    Applier::new(Engine::new(Arc::new(catalog), Policy::default()))
}

fn placed(customer: &str, order: &str, at: DateTime<Utc>) -> Arc<Event> {
    let ev = json!({"specversion": "1.0", "id": format!("p-{order}"), "source": "/shop", "type": "order.placed",
        "time": aftercare::time::rfc3339(at), "subject": customer,
        "data": {"order_id": order, "total": "10.00", "currency": "EUR", "items": [],
                 "customer": {"email": format!("{customer}@example.com"), "name": customer}}});
    Arc::new(Event::from_structured(ev.to_string().as_bytes()).unwrap())
}

fn lines(ds: &[aftercare::engine::Decision]) -> Vec<String> {
    ds.iter().map(common::compact).collect()
}

#[test]
fn a_batch_is_applied_once_and_survives_reopening() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1);
        let ev = placed("c1", "o1", t0());
        let now = t0() + Duration::seconds(1);
        let first = a
            .apply(&mut *store, std::slice::from_ref(&ev), now)
            .unwrap();
        assert_eq!(
            lines(&first.decisions),
            [
                "2024-01-01T00:00:01Z c1 thanks/receipt enter (trigger order.placed)",
                "2024-01-01T00:00:01Z c1 thanks/receipt email (no wait) [A for c1]",
            ],
            "{}",
            ts.url
        );
        // The same event again (a redelivery): no effect.
        let again = a.apply(&mut *store, &[ev], now).unwrap();
        assert_eq!(
            (again.events, again.duplicates, again.decisions.len()),
            (0, 1, 0),
            "{}",
            ts.url
        );
        drop(store);

        let mut store = ts.open();
        let (stored, timeline) = store.customer("c1").unwrap().unwrap();
        let journeys = record::journeys(&stored).unwrap();
        assert_eq!(journeys.len(), 1);
        assert_eq!(
            (journeys[0].step_id.as_str(), journeys[0].status.as_str()),
            ("followup", "due")
        );
        // The receipt went out at `now`; the follow-up waits an hour from then.
        assert_eq!(stored.next_due, Some(now + Duration::hours(1)));
        assert_eq!(
            timeline
                .iter()
                .map(|t| t.action.as_str())
                .collect::<Vec<_>>(),
            ["enter", "email"]
        );
        let outbox = store.claim_emails(now, 10, LEASE).unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(
            (
                outbox[0].step.as_str(),
                outbox[0].template.as_str(),
                outbox[0].order_id.as_deref()
            ),
            ("receipt", "t/a", Some("o1"))
        );
        assert_eq!(store.next_due().unwrap(), Some(now + Duration::hours(1)));

        // Nothing due yet; then the wait is over.
        assert_eq!(
            a.wake(&mut *store, t0() + Duration::minutes(59), 10)
                .unwrap()
                .0,
            0
        );
        let (woken, decisions) = a.wake(&mut *store, t0() + Duration::hours(2), 10).unwrap();
        assert_eq!(woken, 1);
        assert_eq!(
            lines(&decisions),
            [
                "2024-01-01T02:00:00Z c1 thanks/followup email (wait 1h elapsed) [B for c1]",
                "2024-01-01T02:00:00Z c1 thanks/- complete (all steps done)",
            ],
            "{}",
            ts.url
        );
        let (stored, _) = store.customer("c1").unwrap().unwrap();
        assert!(record::journeys(&stored).unwrap().is_empty() && stored.next_due.is_none());
        assert_eq!(
            store
                .claim_emails(t0() + Duration::hours(3), 10, LEASE)
                .unwrap()
                .len(),
            2
        );
    }
}

#[test]
fn journeys_finish_on_their_version_after_a_deploy_and_restart() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut v1 = applier(SEQ_V1);
        store
            .save_versions(&aftercare::service::versions_of(&v1.engine.catalog))
            .unwrap();
        v1.apply(&mut *store, &[placed("c1", "o1", t0())], t0())
            .unwrap();
        drop((v1, store));

        // A new process with the edited file: c1 stays on v1, a new order takes v2.
        let mut store = ts.open();
        let mut v2 = applier(SEQ_V2);
        v2.apply(&mut *store, &[placed("c2", "o2", t0())], t0())
            .unwrap();
        let (_, decisions) = v2.wake(&mut *store, t0() + Duration::hours(3), 10).unwrap();
        let emails: Vec<String> = lines(&decisions)
            .into_iter()
            .filter(|l| l.contains(" email "))
            .collect();
        assert_eq!(
            emails,
            [
                "2024-01-01T03:00:00Z c1 thanks/followup email (wait 1h elapsed) [B for c1]",
                "2024-01-01T03:00:00Z c2 thanks/survey email (wait 2h elapsed) [D for c2]",
            ],
            "{}",
            ts.url
        );
    }
}

/// Several instances on PostgreSQL: each due customer is claimed by exactly one of them.
#[test]
fn instances_never_wake_the_same_customer_twice() {
    let ts = TestStore::postgres();
    let mut store = ts.open();
    let mut a = applier(SEQ_V1);
    let events: Vec<Arc<Event>> = (0..300)
        .map(|i| placed(&format!("c{i}"), &format!("o{i}"), t0()))
        .collect();
    a.apply(&mut *store, &events, t0()).unwrap();
    let later = t0() + Duration::hours(2);
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let url = ts.url.clone();
            std::thread::spawn(move || {
                let mut store = aftercare::store::open(&url).unwrap();
                let mut a = applier(SEQ_V1);
                let mut mine = Vec::new();
                loop {
                    let (n, decisions) = a.wake(&mut *store, later, 7).unwrap();
                    mine.extend(
                        decisions
                            .into_iter()
                            .filter(|d| d.action.as_str() == "email")
                            .map(|d| d.customer.to_string()),
                    );
                    if n == 0 {
                        return mine;
                    }
                }
            })
        })
        .collect();
    let mut all: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (total, all.len()),
        (300, 300),
        "a customer was woken twice or not at all"
    );
}

#[test]
fn the_dedupe_window_forgets_keys_older_than_the_retention_only() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1);
        let old = placed("c1", "o1", t0());
        let recent = placed("c2", "o2", t0());
        a.apply(&mut *store, std::slice::from_ref(&old), t0())
            .unwrap();
        a.apply(
            &mut *store,
            std::slice::from_ref(&recent),
            t0() + Duration::days(20),
        )
        .unwrap();
        // A 30-day window, 31 days after the first event was processed: only its key goes.
        let forgotten = store
            .prune_processed(t0() + Duration::days(31) - Duration::days(30))
            .unwrap();
        assert_eq!(forgotten, 1, "{}", ts.url);
        let now = t0() + Duration::days(31);
        let again = a.apply(&mut *store, &[recent, old], now).unwrap();
        // The recent one is still known; the forgotten one counts as new again.
        assert_eq!((again.duplicates, again.events), (1, 1), "{}", ts.url);
    }
}

#[test]
fn outbox_claims_are_leased_and_outcomes_are_recorded_with_the_timeline() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1);
        a.apply(
            &mut *store,
            &[placed("c1", "o1", t0()), placed("c2", "o2", t0())],
            t0(),
        )
        .unwrap();
        let claimed = store.claim_emails(t0(), 10, LEASE).unwrap();
        assert_eq!(claimed.len(), 2, "{}", ts.url);
        // Claimed rows are nobody else's until the lease runs out.
        assert!(store.claim_emails(t0(), 10, LEASE).unwrap().is_empty());
        let (c1, c2) = (claimed[0].clone(), claimed[1].clone());
        let (c1, c2) = if c1.customer == "c1" {
            (c1, c2)
        } else {
            (c2, c1)
        };
        let retry_at = t0() + Duration::minutes(10);
        store
            .finish_emails(
                t0(),
                &[
                    (
                        c1.clone(),
                        Delivery::Retry {
                            error: "451 try later".into(),
                            at: retry_at,
                        },
                    ),
                    (
                        c2.clone(),
                        Delivery::Bounced {
                            error: "550 no such user".into(),
                            address: "c2@example.com".into(),
                        },
                    ),
                ],
            )
            .unwrap();
        // The retry waits for its time, then comes back with its attempt counted.
        assert!(
            store
                .claim_emails(retry_at - Duration::seconds(1), 10, LEASE)
                .unwrap()
                .is_empty()
        );
        let again = store.claim_emails(retry_at, 10, LEASE).unwrap();
        assert_eq!(
            again
                .iter()
                .map(|r| (r.key.as_str(), r.attempts))
                .collect::<Vec<_>>(),
            [(c1.key.as_str(), 1)]
        );
        store
            .finish_emails(
                retry_at,
                &[(
                    again[0].clone(),
                    Delivery::Sent {
                        message_id: "<m1@example.com>".into(),
                    },
                )],
            )
            .unwrap();
        let (_, timeline) = store.customer("c1").unwrap().unwrap();
        let tail: Vec<(String, String)> = timeline
            .iter()
            .skip(2)
            .map(|t| (t.action.clone(), t.reason.clone()))
            .collect();
        assert_eq!(
            tail,
            [
                (
                    "retry".to_string(),
                    "451 try later; next attempt at 2024-01-01T00:10:00Z".to_string()
                ),
                (
                    "sent".to_string(),
                    "accepted as <m1@example.com>".to_string()
                ),
            ]
        );
        // The bounce marked c2's address, and its timeline says why.
        let (stored, timeline) = store.customer("c2").unwrap().unwrap();
        assert!(record::profile_and_orders(&stored).unwrap().0.bounced);
        assert_eq!(
            timeline
                .last()
                .map(|t| (t.action.as_str(), t.reason.as_str())),
            Some(("bounce", "550 no such user"))
        );
        let counts: std::collections::HashMap<String, i64> =
            store.counts().unwrap().into_iter().collect();
        assert_eq!(
            (
                counts["emails sent"],
                counts["emails bounced"],
                counts["emails pending"]
            ),
            (1, 1, 0)
        );
    }
}

/// Opening a PostgreSQL store whose schema is current takes no table lock: a second instance
/// (or `aftercare customer`) starting while one writes neither waits for its transactions nor
/// makes its writes wait. Here a writer holds an open transaction on every table, and the
/// second open runs with `lock_timeout = 2s`: any lock it asked for would fail it.
/// An email keeps the trace context of what queued it, the first one given: a send span
/// later continues that trace.
#[test]
fn an_email_keeps_the_trace_context_it_was_queued_under() {
    let first = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let later = "00-11111111111111111111111111111111-2222222222222222-01";
    for ts in TestStore::both() {
        let mut store = ts.open();
        applier(SEQ_V1)
            .apply(
                &mut *store,
                &[placed("c1", "o1", t0()), placed("c2", "o2", t0())],
                t0(),
            )
            .unwrap();
        let keys = store.claim_emails(t0(), 10, LEASE).unwrap();
        assert!(keys.iter().all(|r| r.trace.is_none()), "{}", ts.url);
        let c1 = keys
            .iter()
            .find(|r| r.customer == "c1")
            .unwrap()
            .key
            .clone();
        for trace in [first, later] {
            let mut tx = store.begin().unwrap();
            tx.trace_emails(&[(c1.clone(), trace.into()), ("no:such".into(), trace.into())])
                .unwrap();
            tx.commit().unwrap();
        }
        // Claimed again once the first lease ran out.
        let mut traces: Vec<(String, Option<String>)> = store
            .claim_emails(t0() + LEASE, 10, LEASE)
            .unwrap()
            .into_iter()
            .map(|r| (r.customer, r.trace))
            .collect();
        traces.sort();
        assert_eq!(
            traces,
            [
                ("c1".to_string(), Some(first.to_string())),
                ("c2".to_string(), None)
            ],
            "{}",
            ts.url
        );
    }
}

#[test]
fn opening_a_current_postgres_schema_waits_for_no_writer() {
    let store = TestStore::postgres();
    drop(store.open());
    let mut writer = postgres::Client::connect(&store.url, postgres::NoTls).unwrap();
    let mut tx = writer.transaction().unwrap();
    for table in [
        "processed_events",
        "customers",
        "timeline",
        "outbox",
        "sequence_versions",
    ] {
        tx.batch_execute(&format!("LOCK TABLE {table} IN ROW EXCLUSIVE MODE"))
            .unwrap();
    }
    let url = format!("{}%20-clock_timeout%3D2000", store.url);
    let opened = aftercare::store::open(&url);
    assert!(opened.is_ok(), "{:?}", opened.err());
    tx.rollback().unwrap();
}

/// Sustained writes while readers come and go (as the outbox worker's do) leave SQLite's
/// write-ahead log no moment to start over by itself: it grew by every page written (400 MB for
/// 100,000 events). The engine's store starts it over once a commit leaves it past its bound.
#[test]
fn the_sqlite_log_stays_bounded_under_sustained_writes_and_reads() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let test = TestStore::sqlite();
    let path = test.url.trim_start_matches("sqlite://").to_string();
    let wal = format!("{path}-wal");
    let limit: i64 = 1 << 20;
    let mut store = aftercare::store::sqlite::SqliteStore::open_with(
        &path,
        aftercare::store::sqlite::CACHE_KIB,
        limit,
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, reads, path) = (stop.clone(), reads.clone(), path.clone());
        std::thread::spawn(move || {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let tx = conn.transaction().unwrap();
                let _: i64 = tx
                    .query_row(
                        "SELECT count(*) FROM outbox WHERE status = 'pending'",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                tx.commit().unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut a = applier(SEQ_V1);
    let size = || std::fs::metadata(&wal).map_or(0, |m| m.len() as i64);
    // 60 batches of 200 new customers put some 40 MB through the log, 40 times its bound.
    let (batches, mut largest) = (60, 0);
    for b in 0..batches {
        let events: Vec<_> = (0..200)
            .map(|i| placed(&format!("c{b}-{i}"), &format!("o{b}-{i}"), t0()))
            .collect();
        a.apply(&mut store, &events, t0()).unwrap();
        largest = largest.max(size());
    }
    // The bound plus what a batch or two add before one starts the log over (a restart that a
    // reader outwaits is tried again at the next batch).
    assert!(
        largest <= 4 * limit,
        "the log grew to {largest} bytes; its bound is {limit}"
    );
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(
        reads.load(Ordering::Relaxed) > 0,
        "the reader made no progress"
    );
    drop(store);
    assert_eq!(test.count("SELECT count(*) FROM customers"), batches * 200);
}

/// The engine's batches follow each other with no gap; SQLite's lock has no queue. Another
/// writer of the process (the outbox worker claiming and recording emails) must still get its
/// turn between two batches, not only once ingest runs dry.
#[test]
fn other_writers_get_the_sqlite_lock_between_back_to_back_batches() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let test = TestStore::sqlite();
    let mut engine = test.open();
    let batches = 40;
    let streams: Vec<Vec<_>> = (0..batches)
        .map(|b| {
            (0..200)
                .map(|i| placed(&format!("c{b}-{i}"), &format!("o{b}-{i}"), t0()))
                .collect()
        })
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let outbox = {
        let (url, done) = (test.url.clone(), done.clone());
        std::thread::spawn(move || {
            let mut store = aftercare::store::open_small(&url).unwrap();
            // Starts once the engine is under way; each claim records how far the engine was.
            while done.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            (0..5)
                .map(|_| {
                    store.claim_emails(t0(), 10, LEASE).unwrap();
                    done.load(Ordering::SeqCst)
                })
                .collect::<Vec<_>>()
        })
    };
    let mut a = applier(SEQ_V1);
    for events in &streams {
        a.apply(&mut *engine, events, t0()).unwrap();
        done.fetch_add(1, Ordering::SeqCst);
    }
    let claimed_at = outbox.join().unwrap();
    assert!(
        claimed_at.iter().all(|&b| b < batches),
        "claims went through only after the engine's {batches} batches: {claimed_at:?}"
    );
}

/// A SQLite file written by the previous schema (version 2: customers and emails in WITHOUT
/// ROWID tables) is migrated in place when opened: same rows, rowid tables, indexes back.
#[test]
fn a_version_2_sqlite_file_is_migrated_with_its_customers_and_emails() {
    let test = TestStore::sqlite();
    let path = test.url.trim_start_matches("sqlite://").to_string();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE processed_events (
                 source TEXT NOT NULL, id TEXT NOT NULL, at INTEGER NOT NULL,
                 PRIMARY KEY (source, id)) WITHOUT ROWID;
             CREATE INDEX processed_events_at ON processed_events (at);
             CREATE TABLE customers (
                 id TEXT PRIMARY KEY, state TEXT NOT NULL, next_due INTEGER, updated_at INTEGER NOT NULL) WITHOUT ROWID;
             CREATE INDEX customers_due ON customers (next_due) WHERE next_due IS NOT NULL;
             CREATE TABLE timeline (
                 seq INTEGER PRIMARY KEY, customer TEXT NOT NULL, at INTEGER NOT NULL, journey TEXT NOT NULL,
                 sequence TEXT NOT NULL, version TEXT NOT NULL, step TEXT, action TEXT NOT NULL,
                 reason TEXT NOT NULL, subject TEXT);
             CREATE INDEX timeline_customer ON timeline (customer, seq);
             CREATE TABLE outbox (
                 key TEXT PRIMARY KEY, customer TEXT NOT NULL, journey TEXT NOT NULL, sequence TEXT NOT NULL,
                 version TEXT NOT NULL, step TEXT NOT NULL, order_id TEXT, template TEXT NOT NULL,
                 category TEXT NOT NULL, transactional INTEGER NOT NULL, status TEXT NOT NULL,
                 created_at INTEGER NOT NULL, next_attempt_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                 sent_at INTEGER, message_id TEXT, last_error TEXT, claimed_until INTEGER) WITHOUT ROWID;
             CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE status = 'pending';
             CREATE TABLE sequence_versions (
                 name TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL, source TEXT NOT NULL,
                 first_seen INTEGER NOT NULL, PRIMARY KEY (name, version));
             CREATE TABLE journeys (
                 customer TEXT NOT NULL, id TEXT NOT NULL, sequence TEXT NOT NULL, version TEXT NOT NULL,
                 order_id TEXT, started_at INTEGER NOT NULL, step INTEGER NOT NULL, step_id TEXT NOT NULL,
                 status TEXT NOT NULL, due INTEGER, cause TEXT NOT NULL, pos INTEGER NOT NULL, backfill INTEGER NOT NULL,
                 PRIMARY KEY (customer, id)) WITHOUT ROWID;
             INSERT INTO journeys VALUES ('c1', 'j0', 'thanks', 'v0', NULL, 1, 0, 'receipt', 'due', 2, '', 0, 0);
             INSERT INTO customers VALUES ('c1', '{\"profile\":{\"email\":\"c1@example.com\"}}', 7, 1);
             INSERT INTO outbox (key, customer, journey, sequence, version, step, template, category,
                 transactional, status, created_at, next_attempt_at)
                 VALUES ('j1:receipt', 'c1', 'j1', 'thanks', 'v1', 'receipt', 't/a', 'transactional', 1,
                 'pending', 5, 5);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let mut store = test.open();
    let c1 = store.load("c1").unwrap().unwrap();
    assert_eq!(
        (c1.state.as_str(), c1.next_due.map(aftercare::store::micros)),
        ("{\"profile\":{\"email\":\"c1@example.com\"}}", Some(7))
    );
    let claimed = store
        .claim_emails(aftercare::store::from_micros(10), 10, LEASE)
        .unwrap();
    assert_eq!(
        claimed.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["j1:receipt"]
    );
    // Queued before webhooks: an email.
    assert_eq!(claimed[0].endpoint, None);
    drop(store);
    assert_eq!(
        test.text("SELECT CAST(user_version AS TEXT) FROM pragma_user_version"),
        "9"
    );
    // An email queued before traces were kept has none.
    assert_eq!(claimed[0].trace, None);
    assert_eq!(
        test.text(
            "SELECT group_concat(name, ' ') FROM (SELECT name FROM sqlite_master
             WHERE sql LIKE '%WITHOUT ROWID%' ORDER BY name)"
        ),
        "erased journey_rows order_rows processed_events"
    );
    assert_eq!(
        test.text(
            "SELECT group_concat(name, ' ') FROM (SELECT name FROM sqlite_master
             WHERE type = 'index' AND sql IS NOT NULL ORDER BY name)"
        ),
        "customers_due dead_letters_pending outbox_customer outbox_pending processed_events_at timeline_customer timeline_recorded"
    );
}

/// The engine's SQLite handle leaves syncing to its caller (`run` syncs on another thread
/// before storing offsets): commits are there for other connections at once, and the syncer
/// makes them durable. PostgreSQL's commits are durable as they return.
#[test]
fn the_sqlite_store_can_leave_syncing_to_the_caller() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let syncer = store.defer_sync().unwrap();
        assert_eq!(
            syncer.is_some(),
            ts.url.starts_with("sqlite://"),
            "{}",
            ts.url
        );
        applier(SEQ_V1)
            .apply(&mut *store, &[placed("c1", "o1", t0())], t0())
            .unwrap();
        assert_eq!(ts.count("SELECT count(*) FROM customers"), 1, "{}", ts.url);
        if let Some(mut sync) = syncer {
            sync().unwrap();
        }
    }
}

/// Free text the world writes — a relay's reply, a reason quoting a template — may hold a NUL,
/// which PostgreSQL's text type refuses. The outcome is still recorded (the NUL written
/// `\u{0}` there), rather than the transaction refused and the claim retried forever.
#[test]
fn a_nul_in_a_relay_reply_is_recorded_not_refused() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1);
        a.apply(&mut *store, &[placed("c1", "o1", t0())], t0())
            .unwrap();
        let claimed = store.claim_emails(t0(), 10, LEASE).unwrap();
        assert_eq!(claimed.len(), 1, "{}", ts.url);
        store
            .finish_emails(
                t0(),
                &[(
                    claimed[0].clone(),
                    Delivery::Failed {
                        error: "554 bad\0reply".into(),
                    },
                )],
            )
            .unwrap_or_else(|e| panic!("{}: {e}", ts.url));
        let (_, timeline) = store.customer("c1").unwrap().unwrap();
        let last = timeline.last().unwrap();
        assert_eq!(last.action, "failed", "{}", ts.url);
        let expected = if ts.url.starts_with("postgres") {
            "554 bad\\u{0}reply"
        } else {
            "554 bad\0reply"
        };
        assert_eq!(last.reason, expected, "{}", ts.url);
    }
}

/// A claim is fenced: once its lease ran out and another claim took the email, the first
/// claim's outcome is not recorded (it says how many it refused), and the current one's is.
#[test]
fn an_outcome_is_recorded_only_by_the_current_claim() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1);
        a.apply(&mut *store, &[placed("c1", "o1", t0())], t0())
            .unwrap();
        let first = store.claim_emails(t0(), 10, LEASE).unwrap().remove(0);
        assert_eq!(first.claimed_until, t0() + LEASE, "{}", ts.url);
        let later = t0() + LEASE;
        let second = store.claim_emails(later, 10, LEASE).unwrap().remove(0);
        assert_eq!(second.key, first.key);
        assert!(second.claim > first.claim, "{}", ts.url);
        let sent = |id: &str| Delivery::Sent {
            message_id: id.into(),
        };
        let stale = store
            .finish_emails(later, &[(first.clone(), sent("<old@example.com>"))])
            .unwrap();
        assert_eq!(stale, [0], "{}", ts.url);
        let (_, timeline) = store.customer("c1").unwrap().unwrap();
        assert!(timeline.iter().all(|t| t.action != "sent"), "{}", ts.url);
        let current = store
            .finish_emails(later, &[(second, sent("<new@example.com>"))])
            .unwrap();
        assert_eq!(current, Vec::<usize>::new());
        let (_, timeline) = store.customer("c1").unwrap().unwrap();
        let sent_lines: Vec<&str> = timeline
            .iter()
            .filter(|t| t.action == "sent")
            .map(|t| t.reason.as_str())
            .collect();
        assert_eq!(sent_lines, ["accepted as <new@example.com>"], "{}", ts.url);
    }
}

fn event(json: serde_json::Value) -> Arc<Event> {
    Arc::new(Event::from_structured(json.to_string().as_bytes()).unwrap())
}

fn letter(offset: i64, key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) -> DeadLetter {
    DeadLetter {
        topic: "orders".into(),
        partition: 0,
        offset,
        key: key.map(<[u8]>::to_vec),
        value: value.to_vec(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
        reason: "not JSON".into(),
        class: "not_json".into(),
    }
}

/// `forget` leaves no row of the customer in any table — state, timeline, emails queued and
/// sent, notes, dead letters naming them by key, subject, header or address — and takes
/// nothing of anyone else's; the address is kept only as a keyed hash, and that goes when a
/// customer with the address subscribes again.
#[test]
fn an_erased_customer_leaves_no_row_behind_in_any_table() {
    let signer = Signer::new(b"test-signing-key-of-at-least-32-bytes");
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1).signing(signer.clone());
        store
            .save_versions(&aftercare::service::versions_of(&a.engine.catalog))
            .unwrap();
        for (c, o) in [("victim", "o1"), ("victim", "o2"), ("other", "o3")] {
            a.apply(&mut *store, &[placed(c, o, t0())], t0()).unwrap();
        }
        let feedback = event(
            json!({"specversion": "1.0", "id": "f1", "source": "/survey",
            "type": "feedback.submitted", "time": aftercare::time::rfc3339(t0()), "subject": "victim",
            "data": {"kind": "nps", "score": 9, "comment": "I am the victim"}}),
        );
        a.apply(&mut *store, &[feedback], t0()).unwrap();
        a.wake(&mut *store, t0() + Duration::hours(2), 10).unwrap();
        let claimed = store
            .claim_emails(t0() + Duration::hours(2), 100, LEASE)
            .unwrap();
        let first = claimed.iter().find(|r| r.customer == "victim").unwrap();
        let sent = Delivery::Sent {
            message_id: "<m1@example.com>".into(),
        };
        store
            .finish_emails(t0() + Duration::hours(2), &[(first.clone(), sent)])
            .unwrap();
        // Enough orders and journeys that victim's are kept as rows of their own.
        let many: Vec<Arc<Event>> = (0..80)
            .map(|i| placed("victim", &format!("v{i}"), t0() + Duration::hours(2)))
            .collect();
        a.apply(&mut *store, &many, t0() + Duration::hours(2))
            .unwrap();
        let mut tx = store.begin().unwrap();
        tx.dead_letter(
            &[
                letter(1, Some(b"victim"), b"\xff\xfe", &[]),
                letter(
                    2,
                    None,
                    br#"{"subject":"victim","type":"order.placed""#,
                    &[],
                ),
                letter(3, None, b"to: VICTIM@example.com", &[]),
                letter(4, None, b"binary", &[("ce_subject", b"victim")]),
                letter(5, Some(b"other"), br#"{"subject":"other""#, &[]),
            ],
            t0(),
        )
        .unwrap();
        tx.commit().unwrap();
        let theirs = ts.rows_containing(&["victim"]);
        for table in [
            "customers",
            "journey_rows",
            "order_rows",
            "timeline",
            "outbox",
            "dead_letters",
        ] {
            assert!(
                theirs.iter().any(|r| r.starts_with(&format!("{table}: "))),
                "{table} holds none of victim's rows before: {theirs:#?}"
            );
        }
        let others = ts.rows_containing(&["other"]);

        a.forget(&mut *store, "victim", "test").unwrap();
        assert_eq!(
            ts.rows_containing(&["victim"]),
            Vec::<String>::new(),
            "{}",
            ts.url
        );
        assert_eq!(ts.rows_containing(&["other"]), others, "{}", ts.url);
        assert!(store.load("victim").unwrap().is_none());
        let hash = signer.address_hash(" Victim@Example.com");
        assert!(store.is_erased(&hash).unwrap(), "{}", ts.url);
        assert_eq!(ts.count("SELECT COUNT(*) FROM erased"), 1);

        // Back under another id with the same address: still erased until they subscribe.
        let back = |kind: &str, id: &str, data: serde_json::Value| {
            event(
                json!({"specversion": "1.0", "id": id, "source": "/shop", "type": kind,
                "time": aftercare::time::rfc3339(t0()), "subject": "returning", "data": data}),
            )
        };
        let order = back(
            "order.placed",
            "p9",
            json!({"order_id": "o9", "total": "1", "currency": "EUR",
            "items": [], "customer": {"email": "victim@example.com"}}),
        );
        a.apply(&mut *store, &[order], t0()).unwrap();
        assert!(store.is_erased(&hash).unwrap(), "{}", ts.url);
        let subscribed = back(
            "customer.subscribed",
            "s9",
            json!({"categories": ["marketing"]}),
        );
        a.apply(&mut *store, &[subscribed], t0()).unwrap();
        assert!(!store.is_erased(&hash).unwrap(), "{}", ts.url);
    }
}

/// A `customer.erased` event in a batch takes the decisions the batch made for the customer
/// before it; one after it starts them afresh, as a new customer.
#[test]
fn an_erasure_in_a_batch_keeps_only_what_came_after_it() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1);
        let erased = event(
            json!({"specversion": "1.0", "id": "e1", "source": "/privacy",
            "type": "customer.erased", "time": aftercare::time::rfc3339(t0()), "subject": "ann"}),
        );
        let applied = a
            .apply(
                &mut *store,
                &[placed("ann", "o1", t0()), erased, placed("ann", "o2", t0())],
                t0(),
            )
            .unwrap();
        // One journey's: o2's (the journeys below say which).
        assert_eq!(
            lines(&applied.decisions),
            [
                "2024-01-01T00:00:00Z ann thanks/receipt enter (trigger order.placed)",
                "2024-01-01T00:00:00Z ann thanks/receipt email (no wait) [A for ann]",
            ],
            "{}",
            ts.url
        );
        let (stored, timeline) = store.customer("ann").unwrap().unwrap();
        let orders: Vec<String> = record::journeys(&stored)
            .unwrap()
            .iter()
            .filter_map(|j| j.order_id.clone())
            .collect();
        assert_eq!(orders, ["o2"], "{}", ts.url);
        assert_eq!(timeline.len(), 2, "{}", ts.url);
        assert_eq!(
            ts.count("SELECT COUNT(*) FROM outbox WHERE order_id = 'o1'"),
            0,
            "{}",
            ts.url
        );

        // A subscription before the erasure in one batch does not undo it.
        let signer = Signer::new(b"test-signing-key-of-at-least-32-bytes");
        let mut a = applier(SEQ_V1).signing(signer.clone());
        let subscribed = event(json!({"specversion": "1.0", "id": "s1", "source": "/prefs",
            "type": "customer.subscribed", "time": aftercare::time::rfc3339(t0()), "subject": "ann",
            "data": {"categories": ["marketing"]}}));
        let erased = event(
            json!({"specversion": "1.0", "id": "e2", "source": "/privacy",
            "type": "customer.erased", "time": aftercare::time::rfc3339(t0()), "subject": "ann"}),
        );
        a.apply(&mut *store, &[subscribed, erased], t0()).unwrap();
        assert!(
            store
                .is_erased(&signer.address_hash("ann@example.com"))
                .unwrap(),
            "{}",
            ts.url
        );
    }
}

/// `store.timeline_retention` counts from when a line was written: a replay of 1997's orders
/// is kept as long as today's, and every line goes once it is older than the cutoff.
#[test]
fn timeline_retention_counts_from_when_a_line_was_written() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1);
        let old = chrono::DateTime::parse_from_rfc3339("1997-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        a.apply(&mut *store, &[placed("c1", "o1", old)], old)
            .unwrap();
        let lines = ts.count("SELECT COUNT(*) FROM timeline");
        assert!(lines >= 2, "{}", ts.url);
        let now = Utc::now();
        assert_eq!(store.prune_timeline(now - Duration::days(400)).unwrap(), 0);
        assert_eq!(ts.count("SELECT COUNT(*) FROM timeline"), lines);
        let later = now + Duration::days(1);
        assert_eq!(
            store.prune_timeline(later).unwrap(),
            lines as u64,
            "{}",
            ts.url
        );
        assert_eq!(ts.count("SELECT COUNT(*) FROM timeline"), 0);
    }
}

/// The preference pages' path: events about customers the store holds are applied, two for
/// one customer included (a preferences form sends a subscribe and an unsubscribe); those
/// about a customer it does not hold (erased since the email) are dropped.
#[test]
fn preference_events_apply_to_held_customers_only_and_all_of_theirs() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1);
        a.apply(&mut *store, &[placed("c1", "o1", t0())], t0())
            .unwrap();
        let change = |id: &str, kind: &str, customer: &str, category: &str| {
            event(
                json!({"specversion": "1.0", "id": id, "source": "/prefs", "type": kind,
                "time": aftercare::time::rfc3339(t0()), "subject": customer,
                "data": {"categories": [category]}}),
            )
        };
        let applied = a
            .apply_known(
                &mut *store,
                &[
                    change("s1", "customer.subscribed", "c1", "all"),
                    change("u1", "customer.unsubscribed", "c1", "marketing"),
                    change("u2", "customer.unsubscribed", "gone", "marketing"),
                ],
                t0(),
            )
            .unwrap();
        assert_eq!(applied.events, 2, "{}", ts.url);
        let (stored, _) = store.customer("c1").unwrap().unwrap();
        let (profile, _) = record::profile_and_orders(&stored).unwrap();
        let unsubscribed: Vec<&str> = profile.unsubscribed.iter().map(|c| &**c).collect();
        assert_eq!(unsubscribed, ["marketing"], "{}", ts.url);
        assert!(store.load("gone").unwrap().is_none(), "{}", ts.url);
    }
}

/// A PostgreSQL store from before journeys moved into the customer's document still held its
/// `journeys` table (stale copies an erasure would not reach): the migration drops it, and
/// only it — a `journeys` table of someone else's in a shared database stays.
#[test]
fn the_first_journeys_table_is_dropped_and_only_it() {
    for ours in [true, false] {
        let ts = TestStore::postgres();
        let mut c = postgres::Client::connect(&ts.url, postgres::NoTls).unwrap();
        let columns = if ours {
            "customer TEXT NOT NULL, id TEXT NOT NULL, sequence TEXT NOT NULL, version TEXT NOT NULL,
             order_id TEXT, started_at BIGINT NOT NULL, step INTEGER NOT NULL, step_id TEXT NOT NULL,
             status TEXT NOT NULL, due BIGINT, cause TEXT NOT NULL, pos INTEGER NOT NULL,
             backfill BOOLEAN NOT NULL, PRIMARY KEY (customer, id)"
        } else {
            "id TEXT PRIMARY KEY, step_id TEXT, pos INTEGER"
        };
        c.batch_execute(&format!(
            "CREATE TABLE aftercare_schema (version INTEGER NOT NULL);
             INSERT INTO aftercare_schema VALUES (4);
             CREATE TABLE journeys ({columns});"
        ))
        .unwrap();
        drop(ts.open());
        let left = ts.count(
            "SELECT COUNT(*) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = 'journeys'",
        );
        assert_eq!(left, if ours { 0 } else { 1 });
        assert_eq!(ts.count("SELECT COUNT(*) FROM journey_rows"), 0);
    }
}

/// A store a newer build migrated is refused, saying why: this build would read customers
/// without what the newer one added and write them back the poorer.
#[test]
fn a_store_of_a_newer_schema_is_refused() {
    let sqlite = TestStore::sqlite();
    drop(sqlite.open());
    let path = sqlite.url.trim_start_matches("sqlite://").to_string();
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let pg = TestStore::postgres();
    drop(pg.open());
    postgres::Client::connect(&pg.url, postgres::NoTls)
        .unwrap()
        .batch_execute("UPDATE aftercare_schema SET version = 99")
        .unwrap();
    for (ts, known) in [(&sqlite, 9), (&pg, 7)] {
        let refused = aftercare::store::open(&ts.url).err().map(|e| e.to_string());
        assert_eq!(
            refused,
            Some(format!(
                "the store's schema is version 99, written by a newer aftercare; this build knows versions up to {known}: run the newer build (or restore a backup from before it)"
            )),
            "{}",
            ts.url
        );
    }
}

/// A customer with many orders keeps them as rows: `load` (what sending an email reads)
/// gives the profile and every order without the journey rows; `customer` gives everything.
#[test]
fn a_customer_kept_as_rows_reads_back_whole() {
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(SEQ_V1);
        let orders: Vec<Arc<Event>> = (0..70)
            .map(|i| placed("big", &format!("o{i}"), t0()))
            .collect();
        a.apply(&mut *store, &orders, t0()).unwrap();
        assert_eq!(
            ts.count("SELECT COUNT(*) FROM order_rows"),
            70,
            "{}",
            ts.url
        );
        assert_eq!(
            ts.count("SELECT COUNT(*) FROM journey_rows"),
            70,
            "{}",
            ts.url
        );
        let loaded = store.load("big").unwrap().unwrap();
        let (profile, orders) = record::profile_and_orders(&loaded).unwrap();
        assert_eq!(profile.email.as_deref(), Some("big@example.com"));
        let ids: Vec<String> = orders.iter().map(|o| o.id.to_string()).collect();
        let expected: Vec<String> = (0..70).map(|i| format!("o{i}")).collect();
        assert_eq!(ids, expected, "{}", ts.url);
        assert!(loaded.rows.journeys.put.is_empty(), "{}", ts.url);
        let (whole, _) = store.customer("big").unwrap().unwrap();
        assert_eq!(record::journeys(&whole).unwrap().len(), 70, "{}", ts.url);
    }
}

const FILM_AUTO: &str = "name: film-reorder\ncategory: cross_sell\njourney: per_order\ntrigger: { reorder: { category: film, after: auto, fallback: 30d } }\nsteps:\n  - id: remind\n    email: { template: t/a }\n";

fn film(customer: &str, order: &str, at: DateTime<Utc>) -> Arc<Event> {
    let ev = json!({"specversion": "1.0", "id": format!("p-{order}"), "source": "/shop", "type": "order.placed",
        "time": aftercare::time::rfc3339(at), "subject": customer,
        "data": {"order_id": order, "total": "10.00", "currency": "EUR",
                 "items": [{"sku": "f1", "name": "Film", "category": "film", "quantity": 1, "unit_price": "10.00"}],
                 "customer": {"email": format!("{customer}@example.com"), "name": customer}}});
    Arc::new(Event::from_structured(ev.to_string().as_bytes()).unwrap())
}

/// SPEC §9 `after: auto` in `run`: the day's interval comes from the store's orders (read at
/// the day's start), and gives the reminder `simulate` gives for the same orders.
#[test]
fn runs_reorder_intervals_come_from_the_store_and_match_the_simulators() {
    let mut history = Vec::new();
    for i in 0..30 {
        let gap = if i % 2 == 0 { 10 } else { 20 };
        let c = format!("b{i}");
        history.push(film(&c, &format!("{c}-1"), t0()));
        history.push(film(&c, &format!("{c}-2"), t0() + Duration::days(gap)));
    }
    let probe_at = t0() + Duration::days(25);
    let probe = film("probe", "p1", probe_at);
    let expected = "2024-02-10T00:00:00Z probe film-reorder/remind enter (reorder film: 15d after order p1 (after: auto, the median of 30 repeat buyers))";

    // The simulator, reading the same events.
    let mut env = common::TestEnv::new(&[FILM_AUTO]);
    for ev in history.iter().chain([&probe]) {
        env.send(serde_json::from_str(&event_json(ev)).unwrap());
    }
    env.advance("+60d");
    let simulated: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| l.contains(" probe ") && l.contains(" enter "))
        .collect();
    assert_eq!(simulated, [expected]);

    for ts in TestStore::both() {
        let mut store = ts.open();
        let catalog = common::catalog(&[("film.yaml", FILM_AUTO)], common::default_templates());
        let catalog = Arc::new(catalog);
        let intervals = Arc::new(aftercare::engine::intervals::Intervals::default());
        let engine =
            Engine::new(catalog.clone(), Policy::default()).with_intervals(intervals.clone());
        let mut a = Applier::new(engine);
        for ev in &history {
            a.apply(&mut *store, std::slice::from_ref(ev), ev.time)
                .unwrap();
        }
        let categories = aftercare::engine::intervals::watched(&catalog);
        let figures =
            aftercare::service::reorder::compute(&mut *store, &categories, probe_at).unwrap();
        assert_eq!(figures.len(), 1);
        assert_eq!(
            (figures[0].1.median, figures[0].1.buyers),
            (Duration::days(15), 30)
        );
        let mut daily = aftercare::service::reorder::Daily::new(intervals);
        daily.refresh(&mut *store, &catalog, probe_at);
        a.apply(&mut *store, std::slice::from_ref(&probe), probe_at)
            .unwrap();
        let (_, woken) = a
            .wake(&mut *store, t0() + Duration::days(40), 1_000)
            .unwrap();
        let entered: Vec<String> = lines(&woken)
            .into_iter()
            .filter(|l| l.contains(" probe ") && l.contains(" enter "))
            .collect();
        assert_eq!(entered, [expected], "{}", ts.url);
    }
}

/// An event as the JSON the simulator reads.
fn event_json(ev: &Event) -> String {
    let aftercare::event::EventData::OrderPlaced(p) = &ev.data else {
        unreachable!()
    };
    json!({"specversion": "1.0", "id": ev.id, "source": ev.source, "type": "order.placed",
        "time": aftercare::time::rfc3339(ev.time), "subject": &*ev.subject,
        "data": {"order_id": p.order_id, "total": "10.00", "currency": "EUR",
                 "items": [{"sku": "f1", "name": "Film", "category": "film", "quantity": 1, "unit_price": "10.00"}],
                 "customer": {"email": format!("{}@example.com", ev.subject), "name": &*ev.subject}}})
    .to_string()
}

/// The timeline line that gave a coupon code is found by the code alone, in both stores; a
/// code's `_` or `%` matches only itself.
#[test]
fn the_step_that_gave_a_coupon_is_found_by_its_code() {
    let seq = "name: tripod\ncategory: cross_sell\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: offer\n    email: { template: t/a }\n    coupon: { generate: { prefix: T_, length: 8 } }\n";
    for ts in TestStore::both() {
        let mut store = ts.open();
        let mut a = applier(seq);
        let applied = a
            .apply(&mut *store, &[placed("c1", "o1", t0())], t0())
            .unwrap();
        let offer = applied
            .decisions
            .iter()
            .find(|d| d.email.is_some())
            .unwrap();
        let code = offer.reason.rsplit_once("; coupon ").unwrap().1;
        let (customer, line) = store.coupon_given(code).unwrap().unwrap();
        assert_eq!(
            (customer.as_str(), line.step.as_deref()),
            ("c1", Some("offer")),
            "{}",
            ts.url
        );
        assert_eq!(line.journey, offer.journey.to_string());
        let wildcard = format!("T%{}", &code[2..]);
        assert_eq!(store.coupon_given(&wildcard).unwrap(), None, "{}", ts.url);
        assert_eq!(store.coupon_given("T_0").unwrap(), None);
    }
}
