//! Webhook posts (SPEC §9) against a real HTTP receiver that checks the Standard Webhooks
//! signature with an implementation this project did not write (`standardwebhooks`, PyPI):
//! signed, retried on 5xx with the same `webhook-id`, failed on other 4xx, the marketing
//! rules applied at send time.

use super::*;
use common::webhooks::{Receiver, SECRET};

const SHIPPED_SMS: &str = "name: shipped-sms\ncategory: transactional\njourney: per_order\ntrigger: { event: order.shipped }\nsteps:\n  - id: text\n    webhook: { endpoint: sms, body: sms/shipped }\n    coupon: { generate: { prefix: SMS- } }\n";

const CRM: &str = "name: crm\ncategory: cross_sell\njourney: per_order\ntrigger: { event: order.delivered }\nsteps:\n  - id: task\n    webhook: { endpoint: sms, body: sms/shipped }\n";

const BODY: &str = r#"{"to": {{ customer.attributes.phone }}, "name": {{ customer.name }}, "text": {{ "Order " ~ order.id ~ " is on its way" }}, "journey": {{ journey.id }}, "code": {{ coupon.code }}}"#;

/// A store and an applier with the webhook sequences, and a config that posts to `url`.
fn hook_rig(name: &str, url: &str) -> Rig {
    let dir = common::service::sequences_dir(
        &format!("hooks-{name}"),
        &[("shipped-sms.yaml", SHIPPED_SMS), ("crm.yaml", CRM)],
    );
    let body = dir.join("templates/sms/shipped.json.j2");
    std::fs::create_dir_all(body.parent().unwrap()).unwrap();
    std::fs::write(body, BODY).unwrap();
    let mut config = Config::default();
    config.sequences.dir = dir.clone();
    config.mail.transport = Transport::File;
    config.mail.file.dir = scratch(&format!("hooks-mail-{name}"));
    config.mail.retry.first = "1s".into();
    config.mail.retry.max = "2s".into();
    config.http.public_url = "https://mail.example.com".into();
    config.secrets.signing_key = Some(KEY.into());
    config.webhooks.insert(
        "sms".into(),
        aftercare::webhook::Raw {
            url: url.into(),
            headers: [("x-api-key".to_string(), "k-123".to_string())].into(),
            timeout: "5s".into(),
        },
    );
    config
        .secrets
        .webhooks
        .insert("AFTERCARE_WEBHOOK_SECRET_SMS".into(), SECRET.into());
    let catalog = aftercare::service::load_catalog(&dir).unwrap();
    let applier = Applier::new(Engine::new(Arc::new(catalog), Policy::default()))
        .signing(Signer::new(KEY.as_bytes()));
    Rig {
        store: TestStore::sqlite(),
        applier,
        config,
    }
}

fn placed_with_phone(customer: &str, order: &str) -> Arc<Event> {
    event(
        "order.placed",
        &format!("p-{order}"),
        customer,
        json!({"order_id": order, "total": "10.00", "currency": "EUR", "items": [],
               "customer": {"email": format!("{customer}@example.com"), "name": "Ann \"A\" Lee",
                            "attributes": {"phone": "+82 10-1234-5678"}}}),
    )
}

fn shipped(customer: &str, order: &str) -> Arc<Event> {
    event(
        "order.shipped",
        &format!("s-{order}"),
        customer,
        json!({"order_id": order, "carrier": "DHL", "tracking_number": "123"}),
    )
}

#[test]
fn a_webhook_is_signed_retried_on_503_and_delivered_once_with_the_same_id() {
    let port = free_port();
    let receiver = Receiver::start(port, &scratch("hooks-retry"), "503,200", SECRET);
    let mut rig = hook_rig("retry", &receiver.url());
    rig.apply(&[placed_with_phone("c1", "o1")]);
    rig.apply(&[shipped("c1", "o1")]);
    let c = rig.send_until("the webhook delivered", |c| c["emails sent"] == 1);
    assert_eq!(c["emails pending"], 0, "{c:?}");
    let log = receiver.log();
    assert_eq!(log.len(), 2, "{log:?}");
    let statuses: Vec<i64> = log.iter().map(|p| p["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [503, 200]);
    // Both attempts verified by standardwebhooks, under one id: the journey and the step.
    let timeline = rig.timeline("c1");
    let journey = timeline
        .iter()
        .find(|(a, _)| a == "webhook")
        .map(|_| {
            log[0]["headers"]["webhook-id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .unwrap();
    assert!(journey.ends_with(":text"), "{journey}");
    // The code the decision gave (on the timeline) is the one posted, on every attempt.
    let (_, reason) = timeline.iter().find(|(a, _)| a == "webhook").unwrap();
    let code = reason.rsplit_once("; coupon ").unwrap().1.to_string();
    assert!(code.starts_with("SMS-") && code.len() == 12, "{reason}");
    for post in &log {
        assert_eq!(post["verified"], true, "{post}");
        assert_eq!(post["headers"]["webhook-id"], journey.as_str());
        assert_eq!(post["headers"]["content-type"], "application/json");
        assert_eq!(post["headers"]["x-api-key"], "k-123");
        assert_eq!(post["path"], "/hooks");
        let body: Value = serde_json::from_str(post["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"to": "+82 10-1234-5678", "name": "Ann \"A\" Lee",
                   "text": "Order o1 is on its way", "journey": journey.trim_end_matches(":text"),
                   "code": code})
        );
    }
    let actions: Vec<&str> = timeline.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["enter", "webhook", "complete", "retry", "sent"],
        "{timeline:?}"
    );
    assert!(
        timeline[3]
            .1
            .starts_with("HTTP 503 Service Unavailable: {\"status\": 503}; next attempt at "),
        "{timeline:?}"
    );
    assert_eq!(timeline[4].1, format!("accepted as {journey}"));
}

#[test]
fn a_4xx_fails_the_post_and_a_wrong_secret_is_refused_by_the_receiver() {
    let port = free_port();
    let receiver = Receiver::start(port, &scratch("hooks-400"), "400", SECRET);
    let mut rig = hook_rig("400", &receiver.url());
    rig.apply(&[placed_with_phone("c1", "o1")]);
    rig.apply(&[shipped("c1", "o1")]);
    rig.send_until("the webhook failed", |c| c["emails failed"] == 1);
    assert_eq!(receiver.log().len(), 1, "a 400 is not retried");
    let (_, reason) = rig.timeline("c1").pop().unwrap();
    assert_eq!(reason, "refused: HTTP 400 Bad Request: {\"status\": 400}");

    // Signed with another secret: the receiver's check fails it (401), and so does aftercare.
    let other = Receiver::start(
        free_port(),
        &scratch("hooks-401"),
        "200",
        "whsec_b3RoZXItc2VjcmV0LW9mLTI0LWJ5dGVz",
    );
    let mut rig = hook_rig("401", &other.url());
    rig.apply(&[placed_with_phone("c2", "o2")]);
    rig.apply(&[shipped("c2", "o2")]);
    rig.send_until("the webhook refused", |c| c["emails failed"] == 1);
    let log = other.log();
    assert_eq!(log[0]["verified"], false);
    assert_eq!(log[0]["status"], 401);
}

#[test]
fn an_unsubscribe_after_queuing_stops_a_marketing_post_and_nothing_is_sent() {
    let port = free_port();
    let receiver = Receiver::start(port, &scratch("hooks-unsub"), "200", SECRET);
    let mut rig = hook_rig("unsub", &receiver.url());
    rig.apply(&[placed_with_phone("c1", "o1")]);
    rig.apply(&[delivered("c1", "o1")]);
    rig.apply(&[event(
        "customer.unsubscribed",
        "u-1",
        "c1",
        json!({"categories": ["cross_sell"]}),
    )]);
    rig.send_until("the post suppressed", |c| {
        c["emails suppressed when sending"] == 1
    });
    assert!(receiver.log().is_empty());
    let (action, reason) = rig.timeline("c1").pop().unwrap();
    assert_eq!(
        (action.as_str(), reason.as_str()),
        ("suppress", "unsubscribed from cross_sell")
    );
}
