//! The operators' surface of `run`: Prometheus metrics moving as a stream flows, the admin API
//! (bearer token, customers, sequences, journey control, retention figures), readiness, and
//! the dashboard in a real browser (Debian's Chromium, headless). This file is the rig; the
//! tests are grouped by subject: `surface`, `binary`, `dashboard`.

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;

use common::http::{get, post, sample};
use common::service::{Running, config, flush, producer, send, sequences_dir, start, wait_until};
use common::stores::TestStore;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use serde_json::{Value, json};

mod binary;
mod dashboard;
mod surface;

const THANKS: &str = "name: thanks\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/a }\n    goal: { event: review.submitted, within: 30d }\n  - id: followup\n    wait: 1h\n    email: { template: t/b }\n";

const TOKEN: &str = "s3cret-admin-token";

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let c = MockCluster::new(1).unwrap();
    c.create_topic("orders", 2, 1).unwrap();
    c.create_topic("support", 1, 1).unwrap();
    c.create_topic("aftercare.dlq", 1, 1).unwrap();
    c
}

fn event(id: &str, kind: &str, customer: &str, data: Value) -> String {
    json!({"specversion": "1.0", "id": id, "source": "/shop", "type": kind,
        "time": aftercare::time::rfc3339(chrono::Utc::now()), "subject": customer, "data": data})
    .to_string()
}

/// An NPS answer per (customer, score), sent to `support`.
fn nps(p: &ThreadedProducer<DefaultProducerContext>, answers: &[(&str, u8)]) {
    for (c, score) in answers {
        let e = event(
            &format!("f-{c}"),
            "feedback.submitted",
            c,
            json!({"kind": "nps", "score": score}),
        );
        send(p, "support", c, e.as_bytes(), &[]);
    }
}

fn placed(customer: &str, order: &str) -> String {
    event(
        &format!("p-{order}"),
        "order.placed",
        customer,
        json!({"order_id": order, "total": "10.00", "currency": "EUR", "items": [],
               "customer": {"email": format!("{customer}@example.com"), "name": customer}}),
    )
}

fn addr(s: &Running) -> SocketAddr {
    wait_until(30, "the HTTP server to listen", || {
        s.stats.http_addr.get().is_some()
    });
    *s.stats.http_addr.get().unwrap()
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn metrics(at: SocketAddr) -> String {
    let (status, body) = get(at, "/metrics", None);
    assert_eq!(status, 200);
    body
}
