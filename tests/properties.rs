//! Properties over random event streams: the same events give the same decisions, and
//! duplicated events change nothing.

mod common;

use aftercare::engine::Policy;
use common::TestEnv;
use proptest::prelude::*;
use serde_json::{Value, json};

const SEQUENCES: &[&str] = &[
    r#"
name: ful
category: transactional
journey: per_order
trigger: { event: order.placed }
exit_on: [order.cancelled]
steps:
  - id: confirm
    email: { template: t/a }
  - id: shipped
    wait_for: { event: order.shipped, timeout: 2d, on_timeout: late }
    email: { template: t/b }
  - id: end
    exit: true
  - id: late
    email: { template: t/c }
"#,
    r#"
name: edu
category: education
journey: per_order
trigger: { event: order.delivered }
pause_when: "customer.open_tickets > 0"
exit_on: [order.refunded]
steps:
  - id: one
    wait: 1d
    send_window: "0 9-17 * * *"
    email: { template: t/a }
  - id: two
    wait: 2d
    category: cross_sell
    skip_when: "'tripod' in customer.categories"
    email: { template: t/d }
    goal: { event: order.placed, within: 5d }
  - id: hand
    start: rev
"#,
    r#"
name: rev
category: review
journey: per_order
trigger: { event: review.requested }
exit_on: [review.submitted]
steps:
  - id: ask
    wait: 1d
    email: { template: t/e }
"#,
    r#"
name: nps
category: feedback
reenter: true
trigger: { event: support.ticket_resolved }
steps:
  - id: survey
    wait: 12h
    email: { template: t/a }
"#,
];

/// One generated event: (kind index, customer, order/ticket, minutes after the previous one;
/// negative for a late event, older than the one before).
fn event_strategy() -> impl Strategy<Value = (usize, usize, usize, i32)> {
    (0..9usize, 0..3usize, 0..3usize, -600..3000i32)
}

fn to_json(i: usize, (kind, customer, n, _): (usize, usize, usize, i32), minutes: i64) -> Value {
    let order = format!("o{customer}{n}");
    let (kind, data) = match kind {
        0 => (
            "order.placed",
            json!({"order_id": order, "total": 5, "currency": "USD",
             "items": [{"sku": "s", "name": "n", "category": if n == 2 { "tripod" } else { "camera" }, "quantity": 1, "unit_price": 5}]}),
        ),
        1 => (
            "order.shipped",
            json!({"order_id": order, "carrier": "UPS", "tracking_number": "T"}),
        ),
        2 => ("order.delivered", json!({"order_id": order})),
        3 => ("order.cancelled", json!({"order_id": order})),
        4 => ("order.refunded", json!({"order_id": order, "amount": 1})),
        5 => (
            "support.ticket_opened",
            json!({"ticket_id": format!("k{n}")}),
        ),
        6 => (
            "support.ticket_resolved",
            json!({"ticket_id": format!("k{n}")}),
        ),
        7 => (
            "customer.unsubscribed",
            json!({"categories": ["cross_sell"]}),
        ),
        _ => (
            "review.submitted",
            json!({"order_id": order, "sku": "s", "rating": 5}),
        ),
    };
    let time = chrono::DateTime::parse_from_rfc3339(common::T0).unwrap()
        + chrono::Duration::minutes(minutes);
    let mut data = data;
    data["customer"] =
        json!({"email": format!("c{customer}@example.com"), "name": format!("c{customer}")});
    json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/prop", "type": kind,
           "time": time.to_rfc3339(), "subject": format!("c{customer}"), "data": data})
}

fn run(events: &[Value]) -> Vec<String> {
    let policy = Policy {
        min_gap: "6h".parse().unwrap(),
        quiet_hours: Some("22:00-07:00".parse().unwrap()),
        ..Policy::default()
    };
    let mut env = TestEnv::with(SEQUENCES, policy);
    for e in events {
        env.send(e.clone());
    }
    env.advance("+120d");
    env.take()
}

fn stream(spec: &[(usize, usize, usize, i32)]) -> Vec<Value> {
    let mut minutes = 0i64;
    spec.iter()
        .enumerate()
        .map(|(i, e)| {
            minutes = (minutes + i64::from(e.3)).max(0);
            to_json(i, *e, minutes)
        })
        .collect()
}

fn catalog_files() -> Vec<(String, &'static str)> {
    SEQUENCES
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("s{i}.yaml"), *s))
        .collect()
}

fn engine(policy: &Policy) -> aftercare::engine::Engine {
    let files = catalog_files();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, s)| (p.as_str(), *s)).collect();
    aftercare::engine::Engine::new(
        std::sync::Arc::new(common::catalog(&files, common::default_templates())),
        policy.clone(),
    )
}

/// The sequential replay's exact bytes, and the parallel one's with `threads` workers.
fn replays(events: &[Value], threads: usize) -> (Vec<u8>, Vec<u8>) {
    let policy = Policy {
        min_gap: "6h".parse().unwrap(),
        ..Policy::default()
    };
    let jsonl: String = events.iter().map(|e| format!("{e}\n")).collect();
    let until = "30d".parse().unwrap();
    let mut seq = Vec::new();
    let mut sim = aftercare::simulate::Simulator::new(engine(&policy));
    aftercare::simulate::replay(&mut sim, jsonl.as_bytes(), &mut seq, until, |_, _| {}).unwrap();
    let mut par = Vec::new();
    let engines = (0..threads).map(|_| engine(&policy)).collect();
    aftercare::simulate::replay_parallel(engines, jsonl.as_bytes(), &mut par, until, |_, _| {})
        .unwrap();
    (seq, par)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn same_events_same_decisions(spec in prop::collection::vec(event_strategy(), 1..60)) {
        let events = stream(&spec);
        let first = run(&events);
        prop_assert_eq!(&first, &run(&events));
        // Every decision carries a reason.
        prop_assert!(first.iter().all(|l| !l.contains(" ()")));
    }

    #[test]
    fn parallel_replay_prints_exactly_the_sequential_lines(
        spec in prop::collection::vec(event_strategy(), 1..80),
        threads in 2..5usize,
    ) {
        let events = stream(&spec);
        let (seq, par) = replays(&events, threads);
        prop_assert_eq!(String::from_utf8(seq).unwrap(), String::from_utf8(par).unwrap());
    }

    #[test]
    fn duplicated_events_change_nothing(
        spec in prop::collection::vec(event_strategy(), 1..60),
        dups in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..20),
    ) {
        let events = stream(&spec);
        let mut with_dups = events.clone();
        for (which, at) in dups {
            // A copy of an earlier event re-delivered at any later point.
            let src = &events[which.index(events.len())];
            let first = with_dups.iter().position(|e| e == src).unwrap();
            let pos = first + 1 + at.index(with_dups.len() - first);
            with_dups.insert(pos, src.clone());
        }
        prop_assert_eq!(run(&events), run(&with_dups));
    }
}
