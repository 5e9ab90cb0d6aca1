//! The durable stores, SQLite and PostgreSQL, through the same engine path `run` uses.

mod common;

use std::sync::Arc;

use aftercare::engine::{Engine, Policy};
use aftercare::event::Event;
use aftercare::service::apply::Applier;
use aftercare::store::{VersionRecord, record};
use chrono::{DateTime, Duration, Utc};
use common::stores::TestStore;
use serde_json::json;

const SEQ_V1: &str = "name: thanks\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/a }\n  - id: followup\n    wait: 1h\n    email: { template: t/b }\n";
const SEQ_V2: &str = "name: thanks\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/c }\n  - id: survey\n    wait: 2h\n    email: { template: t/d }\n";

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
        let outbox = store.pending_emails(now, 10).unwrap();
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
                .pending_emails(t0() + Duration::hours(3), 10)
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
        store
            .save_versions(&[VersionRecord {
                name: "thanks".into(),
                version: aftercare::sequence::compile::version_of(SEQ_V1),
                path: "thanks.yaml".into(),
                source: SEQ_V1.into(),
            }])
            .unwrap();
        let mut v1 = applier(SEQ_V1);
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
