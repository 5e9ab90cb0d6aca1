//! One test per journey rule (SPEC §2), asserting the exact decisions.

mod common;

use aftercare::engine::Policy;
use aftercare::time::Period;
use common::TestEnv;
use serde_json::json;

const ONE_EMAIL: &str = r#"
name: welcome
trigger: { event: order.placed, when: "order.total > 5" }
steps:
  - id: hello
    email: { template: t/a }
"#;

#[test]
fn trigger_needs_the_event_type_and_a_true_when() {
    let mut env = TestEnv::new(&[ONE_EMAIL]);
    env.placed("c1", "o1", "+0s", "camera");
    env.event(
        "order.placed",
        "c2",
        "+1m",
        json!({"order_id": "o2", "total": 1, "currency": "USD", "items": []}),
    );
    env.event("order.delivered", "c3", "+2m", json!({"order_id": "o3"}));
    assert_eq!(
        env.take(),
        [
            "2024-01-01T00:00:00Z c1 welcome/hello enter (trigger order.placed)",
            "2024-01-01T00:00:00Z c1 welcome/hello email (no wait) [A for c1]",
            "2024-01-01T00:00:00Z c1 welcome/- complete (all steps done)",
        ]
    );
}

#[test]
fn per_customer_runs_once_unless_reenter() {
    let once = "name: once\ntrigger: { event: customer.updated }\nsteps:\n  - id: s1\n    wait: 1d\n    email: { template: t/a }\n";
    let again = "name: again\nreenter: true\ntrigger: { event: customer.updated }\nsteps:\n  - id: s1\n    wait: 1d\n    email: { template: t/b }\n";
    let mut env = TestEnv::new(&[once, again]);
    env.event("customer.updated", "c1", "+0s", json!({}));
    env.event("customer.updated", "c1", "+1h", json!({}));
    env.advance("+1d");
    env.event("customer.updated", "c1", "+2d", json!({}));
    env.advance("+3d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T00:00:00Z c1 again/s1 enter (trigger customer.updated)",
            "2024-01-01T00:00:00Z c1 once/s1 enter (trigger customer.updated)",
            "2024-01-02T00:00:00Z c1 again/s1 email (wait 1d elapsed) [B for c1]",
            "2024-01-02T00:00:00Z c1 again/- complete (all steps done)",
            "2024-01-02T00:00:00Z c1 once/s1 email (wait 1d elapsed) [A for c1]",
            "2024-01-02T00:00:00Z c1 once/- complete (all steps done)",
            "2024-01-03T00:00:00Z c1 again/s1 enter (trigger customer.updated)",
            "2024-01-04T00:00:00Z c1 again/s1 email (wait 1d elapsed) [B for c1]",
            "2024-01-04T00:00:00Z c1 again/- complete (all steps done)",
        ]
    );
}

#[test]
fn per_order_runs_once_per_order() {
    let po = "name: po\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: s1\n    wait: 1h\n    email: { template: t/a }\n";
    let mut env = TestEnv::new(&[po]);
    env.placed("c1", "o1", "+0s", "lens");
    env.placed("c1", "o2", "+10m", "lens");
    env.placed("c1", "o1", "+20m", "lens"); // same order again, new event id
    env.advance("+2h");
    env.placed("c1", "o1", "+3h", "lens"); // after it finished
    env.advance("+5h");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T00:00:00Z c1 po/s1 enter (trigger order.placed)",
            "2024-01-01T00:10:00Z c1 po/s1 enter (trigger order.placed)",
            "2024-01-01T01:00:00Z c1 po/s1 email (wait 1h elapsed) [A for c1]",
            "2024-01-01T01:00:00Z c1 po/- complete (all steps done)",
            "2024-01-01T01:10:00Z c1 po/s1 email (wait 1h elapsed) [A for c1]",
            "2024-01-01T01:10:00Z c1 po/- complete (all steps done)",
        ]
    );
}

#[test]
fn waits_count_from_the_trigger_then_from_when_the_previous_step_finished() {
    let seq = r#"
name: w
trigger: { event: order.placed }
steps:
  - id: s1
    wait: 1d
    email: { template: t/a }
  - id: s2
    wait: 2h
    send_window: "0 12 * * *"
    email: { template: t/b }
  - id: s3
    wait: 1h
    email: { template: t/c }
"#;
    let mut env = TestEnv::new(&[seq]);
    env.placed("c1", "o1", "+0s", "bag");
    env.advance("+10d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T00:00:00Z c1 w/s1 enter (trigger order.placed)",
            "2024-01-02T00:00:00Z c1 w/s1 email (wait 1d elapsed) [A for c1]",
            "2024-01-02T02:00:00Z c1 w/s2 defer (send_window \"0 12 * * *\" (UTC): until 2024-01-02T12:00:00Z)",
            "2024-01-02T12:00:00Z c1 w/s2 email (send window open) [B for c1]",
            "2024-01-02T13:00:00Z c1 w/s3 email (wait 1h elapsed) [C for c1]",
            "2024-01-02T13:00:00Z c1 w/- complete (all steps done)",
        ]
    );
}

const SHIP: &str = r#"
name: ship
journey: per_order
trigger: { event: order.placed }
steps:
  - id: shipped
    wait_for: { event: order.shipped, timeout: 3d }
    email: { template: t/a }
"#;

#[test]
fn wait_for_runs_the_action_when_its_order_event_comes_and_skips_on_timeout() {
    let mut env = TestEnv::new(&[SHIP]);
    env.placed("c1", "o1", "+0s", "bag");
    env.placed("c1", "o2", "+0s", "bag");
    env.event(
        "order.shipped",
        "c1",
        "+1d",
        json!({"order_id": "o2", "carrier": "UPS", "tracking_number": "T2"}),
    );
    env.advance("+5d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T00:00:00Z c1 ship/shipped enter (trigger order.placed)",
            "2024-01-01T00:00:00Z c1 ship/shipped enter (trigger order.placed)",
            "2024-01-02T00:00:00Z c1 ship/shipped email (order.shipped received) [A for c1]",
            "2024-01-02T00:00:00Z c1 ship/- complete (all steps done)",
            "2024-01-04T00:00:00Z c1 ship/shipped skip (wait_for order.shipped timed out after 3d)",
            "2024-01-04T00:00:00Z c1 ship/- complete (all steps done)",
        ]
    );
}

#[test]
fn wait_for_when_filters_events() {
    let seq = r#"
name: ups
trigger: { event: order.placed }
steps:
  - id: shipped
    wait_for: { event: order.shipped, when: "event.data.carrier == 'UPS'", timeout: 3d }
    email: { template: t/a }
"#;
    let mut env = TestEnv::new(&[seq]);
    env.placed("c1", "o1", "+0s", "bag");
    env.event(
        "order.shipped",
        "c1",
        "+1h",
        json!({"order_id": "o1", "carrier": "FedEx", "tracking_number": "T1"}),
    );
    env.event(
        "order.shipped",
        "c1",
        "+2h",
        json!({"order_id": "o1", "carrier": "UPS", "tracking_number": "T2"}),
    );
    assert_eq!(
        env.take()[1..],
        [
            "2024-01-01T02:00:00Z c1 ups/shipped email (order.shipped received) [A for c1]",
            "2024-01-01T02:00:00Z c1 ups/- complete (all steps done)",
        ]
    );
}

#[test]
fn on_timeout_continue_exit_and_jump() {
    let step = |name: &str, on_timeout: &str, extra: &str| {
        format!(
            "name: {name}\ntrigger: {{ event: order.placed }}\nsteps:\n  - id: wait\n    wait_for: {{ event: order.shipped, timeout: 3d, on_timeout: {on_timeout} }}\n    email: {{ template: t/a }}\n{extra}"
        )
    };
    let cont = step("t-continue", "continue", "");
    let exit = step(
        "t-exit",
        "exit",
        "  - id: after\n    email: { template: t/b }\n",
    );
    let jump = step(
        "t-jump",
        "late",
        "  - id: normal\n    email: { template: t/b }\n  - id: late\n    email: { template: t/c }\n",
    );
    let mut env = TestEnv::new(&[&cont, &exit, &jump]);
    env.placed("c1", "o1", "+0s", "bag");
    env.advance("+4d");
    assert_eq!(
        env.take()[3..],
        [
            "2024-01-04T00:00:00Z c1 t-continue/wait email (wait_for order.shipped timed out after 3d: continue) [A for c1]",
            "2024-01-04T00:00:00Z c1 t-continue/- complete (all steps done)",
            "2024-01-04T00:00:00Z c1 t-exit/wait exit (wait_for order.shipped timed out after 3d)",
            "2024-01-04T00:00:00Z c1 t-jump/wait skip (wait_for order.shipped timed out after 3d: go to late)",
            "2024-01-04T00:00:00Z c1 t-jump/late email (no wait) [C for c1]",
            "2024-01-04T00:00:00Z c1 t-jump/- complete (all steps done)",
        ]
    );
}

#[test]
fn send_window_uses_the_customer_then_the_sequence_then_the_default_timezone() {
    let seq = |name: &str, tz: &str| {
        format!(
            "name: {name}\n{tz}trigger: {{ event: customer.updated }}\nsteps:\n  - id: s\n    send_window: \"0 9 * * *\"\n    email: {{ template: t/a }}\n"
        )
    };
    let plain = seq("plain", "");
    let zoned = seq("zoned", "timezone: Asia/Seoul\n");
    let policy = Policy {
        timezone: "America/New_York".parse().unwrap(),
        ..Policy::default()
    };
    let mut env = TestEnv::with(&[&plain, &zoned], policy);
    // 2024-01-01 01:00 UTC = 10:00 in Seoul, 20:00 (Dec 31) in New York.
    let kim =
        json!({"customer": {"email": "k@example.com", "name": "kim", "timezone": "Asia/Seoul"}});
    env.event("customer.updated", "kim", "+1h", kim);
    env.event("customer.updated", "ann", "+1h", json!({}));
    let defers: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| l.contains(" defer "))
        .collect();
    assert_eq!(
        defers,
        [
            "2024-01-01T01:00:00Z kim plain/s defer (send_window \"0 9 * * *\" (Asia/Seoul): until 2024-01-02T00:00:00Z)",
            "2024-01-01T01:00:00Z kim zoned/s defer (send_window \"0 9 * * *\" (Asia/Seoul): until 2024-01-02T00:00:00Z)",
            "2024-01-01T01:00:00Z ann plain/s defer (send_window \"0 9 * * *\" (America/New_York): until 2024-01-01T14:00:00Z)",
            "2024-01-01T01:00:00Z ann zoned/s defer (send_window \"0 9 * * *\" (Asia/Seoul): until 2024-01-02T00:00:00Z)",
        ]
    );
    env.advance("+2d");
    assert_eq!(
        env.take()[0],
        "2024-01-01T14:00:00Z ann plain/s email (send window open) [A for ann]"
    );
}

#[test]
fn skip_when_skips_the_step_and_the_journey_goes_on() {
    let seq = r#"
name: xs
trigger: { event: order.delivered }
steps:
  - id: tripod
    skip_when: "'tripod' in customer.categories"
    email: { template: t/a }
  - id: next
    wait: 1d
    email: { template: t/b }
"#;
    let mut env = TestEnv::new(&[seq]);
    env.placed("c1", "o1", "+0s", "tripod");
    env.event("order.delivered", "c1", "+1h", json!({"order_id": "o1"}));
    env.advance("+2d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T01:00:00Z c1 xs/tripod enter (trigger order.delivered)",
            "2024-01-01T01:00:00Z c1 xs/tripod skip (skip_when: 'tripod' in customer.categories)",
            "2024-01-02T01:00:00Z c1 xs/next email (wait 1d elapsed) [B for c1]",
            "2024-01-02T01:00:00Z c1 xs/- complete (all steps done)",
        ]
    );
}

#[test]
fn pause_holds_the_due_step_and_resume_runs_it_then_waits_count_from_there() {
    let seq = r#"
name: edu
trigger: { event: order.delivered }
pause_when: "customer.open_tickets > 0"
steps:
  - id: s1
    wait: 1d
    email: { template: t/a }
  - id: s2
    wait: 1d
    email: { template: t/b }
"#;
    let mut env = TestEnv::new(&[seq]);
    env.event("order.delivered", "c1", "+0s", json!({"order_id": "o1"}));
    env.event(
        "support.ticket_opened",
        "c1",
        "+12h",
        json!({"ticket_id": "k1"}),
    );
    env.event(
        "support.ticket_opened",
        "c1",
        "+13h",
        json!({"ticket_id": "k2"}),
    );
    env.advance("+1d");
    env.event(
        "support.ticket_resolved",
        "c1",
        "+1d3h",
        json!({"ticket_id": "k1"}),
    );
    env.event(
        "support.ticket_resolved",
        "c1",
        "+1d6h",
        json!({"ticket_id": "k2"}),
    );
    env.advance("+5d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T00:00:00Z c1 edu/s1 enter (trigger order.delivered)",
            "2024-01-02T00:00:00Z c1 edu/s1 pause (pause_when: customer.open_tickets > 0)",
            "2024-01-02T06:00:00Z c1 edu/s1 resume (pause_when no longer true)",
            "2024-01-02T06:00:00Z c1 edu/s1 email (resumed) [A for c1]",
            "2024-01-03T06:00:00Z c1 edu/s2 email (wait 1d elapsed) [B for c1]",
            "2024-01-03T06:00:00Z c1 edu/- complete (all steps done)",
        ]
    );
}

#[test]
fn exit_on_ends_journeys_at_once_and_per_order_only_for_its_order() {
    let seq = r#"
name: po
journey: per_order
trigger: { event: order.placed }
exit_on: [order.refunded, support.ticket_opened]
steps:
  - id: s1
    wait: 5d
    email: { template: t/a }
"#;
    let mut env = TestEnv::new(&[seq]);
    env.placed("c1", "o1", "+0s", "lens");
    env.placed("c1", "o2", "+0s", "lens");
    env.event(
        "order.refunded",
        "c1",
        "+1d",
        json!({"order_id": "o1", "amount": 10}),
    );
    env.event(
        "support.ticket_opened",
        "c1",
        "+2d",
        json!({"ticket_id": "k1"}),
    );
    env.advance("+6d");
    assert_eq!(
        env.take()[2..],
        [
            "2024-01-02T00:00:00Z c1 po/s1 exit (exit_on order.refunded)",
            "2024-01-03T00:00:00Z c1 po/s1 exit (exit_on support.ticket_opened)",
        ]
    );
}

#[test]
fn start_enrols_in_another_sequence_with_the_same_order() {
    let parent = "name: parent\njourney: per_order\ntrigger: { event: order.delivered }\nsteps:\n  - id: hand\n    start: child\n";
    let child = "name: child\njourney: per_order\ntrigger: { event: child.go }\nsteps:\n  - id: ask\n    wait: 1d\n    email: { template: t/a }\n";
    let mut env = TestEnv::new(&[parent, child]);
    env.event("child.go", "c2", "+0s", json!({"order_id": "o9"}));
    env.event("order.delivered", "c1", "+0s", json!({"order_id": "o1"}));
    env.event("order.delivered", "c2", "+0s", json!({"order_id": "o9"}));
    env.advance("+2d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T00:00:00Z c2 child/ask enter (trigger child.go)",
            "2024-01-01T00:00:00Z c1 parent/hand enter (trigger order.delivered)",
            "2024-01-01T00:00:00Z c2 parent/hand enter (trigger order.delivered)",
            // The instant's events first, then its due steps, customers in first-seen order.
            "2024-01-01T00:00:00Z c2 parent/hand start (not started: already in child)",
            "2024-01-01T00:00:00Z c2 parent/- complete (all steps done)",
            "2024-01-01T00:00:00Z c1 parent/hand start (start child)",
            "2024-01-01T00:00:00Z c1 child/ask enter (started by parent/hand)",
            "2024-01-01T00:00:00Z c1 parent/- complete (all steps done)",
            "2024-01-02T00:00:00Z c2 child/ask email (wait 1d elapsed) [A for c2]",
            "2024-01-02T00:00:00Z c2 child/- complete (all steps done)",
            "2024-01-02T00:00:00Z c1 child/ask email (wait 1d elapsed) [A for c1]",
            "2024-01-02T00:00:00Z c1 child/- complete (all steps done)",
        ]
    );
}

#[test]
fn goal_counts_once_within_its_window_on_any_of_the_customers_events() {
    let seq = r#"
name: xs
journey: per_order
trigger: { event: order.delivered }
steps:
  - id: offer
    email: { template: t/a }
    goal: { event: order.placed, within: 14d }
"#;
    let mut env = TestEnv::new(&[seq]);
    env.event("order.delivered", "c1", "+0s", json!({"order_id": "o1"}));
    env.event("order.delivered", "c2", "+0s", json!({"order_id": "o5"}));
    env.placed("c1", "o2", "+3d", "tripod");
    env.placed("c1", "o3", "+4d", "tripod");
    env.placed("c2", "o6", "+15d", "tripod");
    let lines = env.take();
    assert_eq!(
        lines[6..],
        ["2024-01-04T00:00:00Z c1 xs/offer goal (order.placed within 14d)"]
    );
}

#[test]
fn step_category_governs_unsubscribes_and_transactional_ignores_them() {
    let edu = r#"
name: edu
category: education
trigger: { event: order.delivered }
steps:
  - id: s1
    email: { template: t/a }
  - id: s2
    category: cross_sell
    email: { template: t/b }
"#;
    let tx = "name: tx\ncategory: transactional\ntrigger: { event: order.delivered }\nsteps:\n  - id: s\n    email: { template: t/c }\n";
    let mut env = TestEnv::new(&[edu, tx]);
    env.event(
        "customer.unsubscribed",
        "c1",
        "+0s",
        json!({"categories": ["cross_sell"]}),
    );
    env.event(
        "customer.unsubscribed",
        "c2",
        "+0s",
        json!({"categories": ["all"]}),
    );
    env.event("order.delivered", "c1", "+1h", json!({"order_id": "o1"}));
    env.event("order.delivered", "c2", "+1h", json!({"order_id": "o2"}));
    assert_eq!(
        env.take(),
        [
            "2024-01-01T01:00:00Z c1 edu/s1 enter (trigger order.delivered)",
            "2024-01-01T01:00:00Z c1 tx/s enter (trigger order.delivered)",
            "2024-01-01T01:00:00Z c2 edu/s1 enter (trigger order.delivered)",
            "2024-01-01T01:00:00Z c2 tx/s enter (trigger order.delivered)",
            "2024-01-01T01:00:00Z c1 edu/s1 email (no wait) [A for c1]",
            "2024-01-01T01:00:00Z c1 edu/s2 suppress (unsubscribed from cross_sell)",
            "2024-01-01T01:00:00Z c1 edu/- complete (all steps done)",
            "2024-01-01T01:00:00Z c1 tx/s email (no wait) [C for c1]",
            "2024-01-01T01:00:00Z c1 tx/- complete (all steps done)",
            "2024-01-01T01:00:00Z c2 edu/s1 suppress (unsubscribed from all)",
            "2024-01-01T01:00:00Z c2 edu/s2 suppress (unsubscribed from all)",
            "2024-01-01T01:00:00Z c2 edu/- complete (all steps done)",
            "2024-01-01T01:00:00Z c2 tx/s email (no wait) [C for c2]",
            "2024-01-01T01:00:00Z c2 tx/- complete (all steps done)",
        ]
    );
}

#[test]
fn bounced_or_missing_addresses_suppress_everything() {
    let tx = "name: tx\ncategory: transactional\ntrigger: { event: order.delivered }\nsteps:\n  - id: s\n    email: { template: t/c }\n";
    let mut env = TestEnv::new(&[tx]);
    env.event("customer.updated", "c1", "+0s", json!({}));
    env.bounce("c1");
    env.event("order.delivered", "c1", "+1h", json!({"order_id": "o1"}));
    let no_address = json!({"order_id": "o2", "customer": {"name": "no address"}});
    env.event("order.delivered", "c2", "+1h", no_address);
    let lines = env.take();
    assert!(
        lines.contains(&"2024-01-01T01:00:00Z c1 tx/s suppress (address bounced)".into()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"2024-01-01T01:00:00Z c2 tx/s suppress (no email address)".into()),
        "{lines:?}"
    );
}

#[test]
fn min_gap_suppresses_marketing_but_not_transactional_email() {
    let m1 = "name: m1\ntrigger: { event: order.delivered }\nsteps:\n  - id: s\n    email: { template: t/a }\n";
    let m2 = "name: m2\ntrigger: { event: order.delivered }\nsteps:\n  - id: s\n    wait: 12h\n    email: { template: t/b }\n  - id: t\n    wait: 1d\n    email: { template: t/d }\n";
    let tx = "name: tx\ncategory: transactional\ntrigger: { event: order.delivered }\nsteps:\n  - id: s\n    wait: 1h\n    email: { template: t/c }\n";
    let policy = Policy {
        min_gap: "1d".parse::<Period>().unwrap(),
        ..Policy::default()
    };
    let mut env = TestEnv::with(&[m1, m2, tx], policy);
    env.event("order.delivered", "c1", "+0s", json!({"order_id": "o1"}));
    env.advance("+3d");
    let lines: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| !l.contains(" enter ") && !l.contains(" complete "))
        .collect();
    assert_eq!(
        lines,
        [
            "2024-01-01T00:00:00Z c1 m1/s email (no wait) [A for c1]",
            "2024-01-01T01:00:00Z c1 tx/s email (wait 1h elapsed) [C for c1]",
            "2024-01-01T12:00:00Z c1 m2/s suppress (min_gap 1d: last marketing email at 2024-01-01T00:00:00Z)",
            "2024-01-02T12:00:00Z c1 m2/t email (wait 1d elapsed) [D for c1]",
        ]
    );
}

#[test]
fn quiet_hours_defer_marketing_to_their_end_and_leave_transactional_alone() {
    let m = "name: m\ntrigger: { event: order.delivered }\nsteps:\n  - id: s\n    email: { template: t/a }\n";
    let tx = "name: tx\ncategory: transactional\ntrigger: { event: order.delivered }\nsteps:\n  - id: s\n    email: { template: t/c }\n";
    let policy = Policy {
        quiet_hours: Some("21:00-08:00".parse().unwrap()),
        ..Policy::default()
    };
    let mut env = TestEnv::with(&[m, tx], policy);
    env.event("order.delivered", "c1", "+22h", json!({"order_id": "o1"}));
    env.advance("+2d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T22:00:00Z c1 m/s enter (trigger order.delivered)",
            "2024-01-01T22:00:00Z c1 tx/s enter (trigger order.delivered)",
            "2024-01-01T22:00:00Z c1 m/s defer (quiet hours 21:00-08:00 (UTC): until 2024-01-02T08:00:00Z)",
            "2024-01-01T22:00:00Z c1 tx/s email (no wait) [C for c1]",
            "2024-01-01T22:00:00Z c1 tx/- complete (all steps done)",
            "2024-01-02T08:00:00Z c1 m/s email (quiet hours over) [A for c1]",
            "2024-01-02T08:00:00Z c1 m/- complete (all steps done)",
        ]
    );
}

#[test]
fn old_events_update_profiles_and_end_journeys_but_enrol_nobody_in_marketing() {
    let m = "name: m\ntrigger: { event: order.placed }\nexit_on: [order.refunded]\nsteps:\n  - id: s\n    wait: 30d\n    email: { template: t/a }\n";
    let tx = "name: tx\ncategory: transactional\ntrigger: { event: order.placed }\nsteps:\n  - id: s\n    email: { template: t/c }\n";
    let mut env = TestEnv::new(&[m, tx]);
    env.placed("c1", "o1", "+10d", "lens"); // clock now at +10d
    env.placed("c2", "o2", "+1d", "lens"); // 9 days old when processed
    env.event(
        "order.refunded",
        "c1",
        "+1d",
        json!({"order_id": "o1", "amount": 10}),
    );
    // c2's order is 9 days old when it arrives: transactional only, at once since it is late.
    // The late refund ends c1's marketing journey; c1's receipt, due at +10d, runs after it.
    assert_eq!(
        env.take(),
        [
            "2024-01-11T00:00:00Z c1 m/s enter (trigger order.placed)",
            "2024-01-11T00:00:00Z c1 tx/s enter (trigger order.placed)",
            "2024-01-11T00:00:00Z c2 tx/s enter (trigger order.placed)",
            "2024-01-11T00:00:00Z c2 tx/s email (no wait) [C for c2]",
            "2024-01-11T00:00:00Z c2 tx/- complete (all steps done)",
            "2024-01-11T00:00:00Z c1 m/s exit (exit_on order.refunded)",
            "2024-01-11T00:00:00Z c1 tx/s email (no wait) [C for c1]",
            "2024-01-11T00:00:00Z c1 tx/- complete (all steps done)",
        ]
    );
    assert_eq!(env.sim.customer("c2").unwrap().profile.orders_count, 1);
}

#[test]
fn an_event_seen_twice_has_effect_once() {
    let mut env = TestEnv::new(&[ONE_EMAIL]);
    let ev = |source: &str| {
        json!({"specversion": "1.0", "id": "same", "source": source, "type": "order.placed",
               "time": "2024-01-01T00:00:00Z", "subject": "c1",
               "data": {"order_id": "o1", "total": 10, "currency": "USD", "items": [],
                        "customer": {"email": "c1@example.com"}}})
    };
    env.send(ev("/shop"));
    env.send(ev("/shop"));
    assert_eq!(env.take().len(), 3);
    assert_eq!(env.sim.customer("c1").unwrap().profile.orders_count, 1);
    assert_eq!(env.sim.stats.duplicates, 1);
    env.send(ev("/other-shop")); // same id, another source: a different event
    assert_eq!(env.sim.stats.duplicates, 1);
}

#[test]
fn an_event_goes_before_a_step_due_at_the_same_instant() {
    let seq = r#"
name: tie
trigger: { event: customer.updated }
steps:
  - id: s
    wait: 1d
    skip_when: "customer.open_tickets > 0"
    email: { template: t/a }
"#;
    let mut env = TestEnv::new(&[seq]);
    env.event("customer.updated", "c1", "+0s", json!({}));
    env.event(
        "support.ticket_opened",
        "c1",
        "+1d",
        json!({"ticket_id": "k"}),
    );
    assert_eq!(
        env.take()[1],
        "2024-01-02T00:00:00Z c1 tie/s skip (skip_when: customer.open_tickets > 0)"
    );
}

#[test]
fn journeys_stay_on_the_version_they_started_on() {
    let v1 = "name: seq\ntrigger: { event: customer.updated }\nsteps:\n  - id: old\n    wait: 1d\n    email: { template: t/a }\n";
    let v2 = "name: seq\ntrigger: { event: customer.updated }\nsteps:\n  - id: new\n    wait: 1d\n    email: { template: t/b }\n";
    let mut env = TestEnv::new(&[v1]);
    env.event("customer.updated", "c1", "+0s", json!({}));
    env.deploy(&[v2]);
    env.event("customer.updated", "c2", "+1h", json!({}));
    env.advance("+2d");
    let d = env.take_decisions();
    let emails: Vec<String> = d
        .iter()
        .filter(|d| d.action.as_str() == "email")
        .map(common::compact)
        .collect();
    assert_eq!(
        emails,
        [
            "2024-01-02T00:00:00Z c1 seq/old email (wait 1d elapsed) [A for c1]",
            "2024-01-02T01:00:00Z c2 seq/new email (wait 1d elapsed) [B for c2]",
        ]
    );
    assert_ne!(d[0].version, d.last().unwrap().version);
}

#[test]
fn unsubscribed_customers_are_enrolled_and_the_journey_carries_on() {
    let seq = "name: m\ncategory: review\ntrigger: { event: order.delivered }\nsteps:\n  - id: a\n    email: { template: t/a }\n  - id: b\n    wait: 1d\n    email: { template: t/b }\n";
    let mut env = TestEnv::new(&[seq]);
    env.event(
        "customer.unsubscribed",
        "c1",
        "+0s",
        json!({"categories": ["review"]}),
    );
    env.event("order.delivered", "c1", "+1h", json!({"order_id": "o1"}));
    env.advance("+2d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T01:00:00Z c1 m/a enter (trigger order.delivered)",
            "2024-01-01T01:00:00Z c1 m/a suppress (unsubscribed from review)",
            "2024-01-02T01:00:00Z c1 m/b suppress (unsubscribed from review)",
            "2024-01-02T01:00:00Z c1 m/- complete (all steps done)",
        ]
    );
}

#[test]
fn exit_step_ends_with_its_step_and_complete_has_no_step() {
    let seq = "name: x\ntrigger: { event: customer.updated }\nsteps:\n  - id: out\n    exit: true\n  - id: never\n    email: { template: t/a }\n";
    let mut env = TestEnv::new(&[seq]);
    env.event("customer.updated", "c1", "+0s", json!({}));
    let d = env.take_decisions();
    assert_eq!(d[1].action.as_str(), "exit");
    assert_eq!(d[1].step.as_deref(), Some("out"));
    assert_eq!(d[1].reason, "exit step");
    let line: serde_json::Value = serde_json::from_str(&d[0].to_json()).unwrap();
    assert_eq!(line["action"], "enter");
    let mut env = TestEnv::new(&[ONE_EMAIL]);
    env.placed("c1", "o1", "+0s", "bag");
    let done: serde_json::Value = serde_json::from_str(&env.take_decisions()[2].to_json()).unwrap();
    assert_eq!(
        done,
        json!({"at": "2024-01-01T00:00:00Z", "customer": "c1", "sequence": "welcome",
        "step": null, "action": "complete", "reason": "all steps done", "subject": null})
    );
}

#[test]
fn profile_fields_follow_the_events() {
    let mut env = TestEnv::new(&[ONE_EMAIL]);
    env.placed("c1", "o1", "+0s", "camera");
    env.placed("c1", "o2", "+1h", "tripod");
    env.event(
        "order.refunded",
        "c1",
        "+2h",
        json!({"order_id": "o2", "amount": "4.50"}),
    );
    env.event(
        "support.ticket_opened",
        "c1",
        "+3h",
        json!({"ticket_id": "k1"}),
    );
    env.event(
        "support.ticket_opened",
        "c1",
        "+3h",
        json!({"ticket_id": "k2"}),
    );
    env.event(
        "support.ticket_opened",
        "c1",
        "+3h",
        json!({"ticket_id": "k1"}),
    );
    env.event(
        "support.ticket_resolved",
        "c1",
        "+4h",
        json!({"ticket_id": "k2"}),
    );
    let p = &env.sim.customer("c1").unwrap().profile;
    assert_eq!(p.orders_count, 2);
    assert_eq!(p.total_spent.to_string(), "15.50");
    let strs = |v: &[Box<str>]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(strs(&p.categories), ["camera", "tripod"]);
    assert_eq!(strs(&p.skus), ["camera-1", "tripod-1"]);
    assert_eq!(strs(&p.open_tickets), ["k1"]);
    assert_eq!(
        p.last_order_at.unwrap().to_rfc3339(),
        "2024-01-01T01:00:00+00:00"
    );
}

#[test]
fn every_event_of_an_instant_goes_before_a_step_due_then() {
    let mut env = TestEnv::new(&[SHIP]);
    env.placed("c1", "o1", "+0s", "bag");
    // At the timeout instant: an unrelated event, then the awaited one. Both go first.
    env.event("customer.updated", "c1", "+3d", json!({}));
    env.event(
        "order.shipped",
        "c1",
        "+3d",
        json!({"order_id": "o1", "carrier": "UPS", "tracking_number": "T"}),
    );
    assert_eq!(
        env.take()[1..],
        [
            "2024-01-04T00:00:00Z c1 ship/shipped email (order.shipped received) [A for c1]",
            "2024-01-04T00:00:00Z c1 ship/- complete (all steps done)",
        ]
    );
}

#[test]
fn backfill_reaches_no_marketing_through_a_transactional_hand_over() {
    let thanks = "name: thanks\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: receipt\n    email: { template: t/a }\n  - id: nudge\n    category: promo\n    email: { template: t/b }\n  - id: hand\n    start: review\n";
    let review = "name: review\ncategory: review\njourney: per_order\ntrigger: { event: never.happens }\nsteps:\n  - id: ask\n    wait: 2d\n    email: { template: t/c }\n";
    let mut env = TestEnv::new(&[thanks, review]);
    env.placed("ann", "o1", "+30d", "bag");
    env.placed("bob", "o0", "+1d", "bag"); // 29 days old when it arrives
    env.advance("+40d");
    let bob: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| l.contains(" bob "))
        .collect();
    assert_eq!(
        bob,
        [
            "2024-01-31T00:00:00Z bob thanks/receipt enter (trigger order.placed)",
            "2024-01-31T00:00:00Z bob thanks/receipt email (no wait) [A for bob]",
            "2024-01-31T00:00:00Z bob thanks/nudge suppress (backfill: the triggering event is older than policy.max_event_age)",
            "2024-01-31T00:00:00Z bob thanks/hand start (not started: backfill: the triggering event is older than policy.max_event_age)",
            "2024-01-31T00:00:00Z bob thanks/- complete (all steps done)",
        ]
    );
}

#[test]
fn a_send_window_inside_quiet_hours_is_skipped_not_deferred_forever() {
    let seq = "name: late\ntrigger: { event: customer.updated }\nsteps:\n  - id: s\n    send_window: \"0 22 * * *\"\n    email: { template: t/a }\n  - id: t\n    send_window: \"0 7,12 * * *\"\n    email: { template: t/b }\n";
    let policy = Policy {
        quiet_hours: Some("21:00-08:00".parse().unwrap()),
        ..Policy::default()
    };
    let mut env = TestEnv::with(&[seq], policy);
    env.event("customer.updated", "c1", "+10h", json!({}));
    env.advance("+5d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T10:00:00Z c1 late/s enter (trigger customer.updated)",
            "2024-01-01T10:00:00Z c1 late/s skip (send_window \"0 22 * * *\" never opens outside quiet hours 21:00-08:00)",
            // 07:00 falls in quiet hours, so the window's next allowed slot is noon.
            "2024-01-01T10:00:00Z c1 late/t defer (send_window \"0 7,12 * * *\" (UTC): until 2024-01-01T12:00:00Z)",
            "2024-01-01T12:00:00Z c1 late/t email (send window open) [B for c1]",
            "2024-01-01T12:00:00Z c1 late/- complete (all steps done)",
        ]
    );
}

#[test]
fn a_journey_ended_by_an_event_may_be_entered_again() {
    let nps = "name: nps\ntrigger: { event: support.ticket_resolved }\nexit_on: [support.ticket_opened]\nsteps:\n  - id: ask\n    wait: 1d\n    email: { template: t/a }\n";
    let mut env = TestEnv::new(&[nps]);
    env.event(
        "support.ticket_resolved",
        "c1",
        "+0s",
        json!({"ticket_id": "k1"}),
    );
    env.event(
        "support.ticket_opened",
        "c1",
        "+1h",
        json!({"ticket_id": "k2"}),
    );
    env.event(
        "support.ticket_resolved",
        "c1",
        "+2h",
        json!({"ticket_id": "k2"}),
    );
    env.advance("+3d");
    env.event(
        "support.ticket_resolved",
        "c1",
        "+4d",
        json!({"ticket_id": "k3"}),
    );
    env.advance("+6d");
    assert_eq!(
        env.take(),
        [
            "2024-01-01T00:00:00Z c1 nps/ask enter (trigger support.ticket_resolved)",
            "2024-01-01T01:00:00Z c1 nps/ask exit (exit_on support.ticket_opened)",
            "2024-01-01T02:00:00Z c1 nps/ask enter (trigger support.ticket_resolved)",
            "2024-01-02T02:00:00Z c1 nps/ask email (wait 1d elapsed) [A for c1]",
            "2024-01-02T02:00:00Z c1 nps/- complete (all steps done)",
            // Completed with reenter: false: not again.
        ]
    );
}

/// SPEC §8's hash, written again here: the first 8 bytes, big-endian, of SHA-256 of `text`.
fn spec_hash(text: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap())
}

const HELD: &str = r#"
name: held
experiment:
  holdout: 50%
  salt: t1
  measure:
    - { name: repeat_purchase, event: order.placed, within: 90d }
trigger: { event: order.placed }
steps:
  - id: receipt
    category: transactional
    email: { template: t/a }
  - id: tip
    wait: 1d
    email: { template: t/b }
  - id: later
    wait: 1d
    email: { template: t/c }
"#;

/// A held-out customer walks the steps as everyone else; each marketing email is a `holdout`
/// line with the bucket, nothing is sent; transactional emails go to everyone. Who is held out
/// is SPEC §8's bucket, computed here independently.
#[test]
fn held_out_customers_get_no_marketing_email_and_every_transactional_one() {
    let mut env = TestEnv::new(&[HELD]);
    let customers: Vec<String> = (1..=12).map(|i| format!("c{i}")).collect();
    for c in &customers {
        env.placed(c, &format!("o-{c}"), "+0s", "bag");
    }
    env.advance("+3d");
    let lines = env.take();
    let mut held = 0;
    for c in &customers {
        let bucket = spec_hash(&format!("t1:held:{c}")) % 10_000;
        let mine: Vec<&str> = lines
            .iter()
            .filter(|l| l.split(' ').nth(1) == Some(c.as_str()))
            .map(|l| l.as_str())
            .collect();
        let (group, tip, later) = if bucket < 5_000 {
            held += 1;
            (
                format!("held out: bucket {bucket:04} < 5000"),
                format!(
                    "2024-01-02T00:00:00Z {c} held/tip holdout (held out: bucket {bucket:04} < 5000)"
                ),
                format!(
                    "2024-01-03T00:00:00Z {c} held/later holdout (held out: bucket {bucket:04} < 5000)"
                ),
            )
        } else {
            (
                format!("treated: bucket {bucket:04} ≥ 5000"),
                format!("2024-01-02T00:00:00Z {c} held/tip email (wait 1d elapsed) [B for {c}]"),
                format!("2024-01-03T00:00:00Z {c} held/later email (wait 1d elapsed) [C for {c}]"),
            )
        };
        assert_eq!(
            mine,
            [
                format!(
                    "2024-01-01T00:00:00Z {c} held/receipt enter (trigger order.placed; {group})"
                ),
                format!("2024-01-01T00:00:00Z {c} held/receipt email (no wait) [A for {c}]"),
                tip,
                later,
                format!("2024-01-03T00:00:00Z {c} held/- complete (all steps done)"),
            ],
            "{c}, bucket {bucket}"
        );
    }
    // Both groups are there (the draw is fixed by the salt: a regression, not luck).
    assert!((1..12).contains(&held), "{held} of 12 held out");
}

const SPLIT: &str = r#"
name: split
trigger: { event: order.placed }
steps:
  - id: tripod
    email: { template: t/a }
    variants:
      - { id: a, weight: 1 }
      - { id: b, weight: 3, email: { template: t/b } }
"#;

/// A split step gives each customer one variant, by SHA-256 of salt (the sequence's name
/// without an experiment), sequence, step and customer modulo the weights' sum, walking the
/// variants in order; the email's reason names it.
#[test]
fn a_split_step_sends_each_customer_the_variant_the_hash_gives() {
    let mut env = TestEnv::new(&[SPLIT]);
    let customers: Vec<String> = (1..=16).map(|i| format!("c{i}")).collect();
    for c in &customers {
        env.placed(c, &format!("o-{c}"), "+0s", "bag");
    }
    let lines = env.take();
    let mut seen = std::collections::BTreeSet::new();
    for c in &customers {
        let draw = spec_hash(&format!("split:split:tripod:{c}")) % 4;
        let (variant, letter) = if draw < 1 { ("a", "A") } else { ("b", "B") };
        seen.insert(variant);
        let email = lines
            .iter()
            .find(|l| l.split(' ').nth(1) == Some(c.as_str()) && l.contains(" email "))
            .unwrap();
        assert_eq!(
            email,
            &format!(
                "2024-01-01T00:00:00Z {c} split/tripod email (no wait; variant {variant}) [{letter} for {c}]"
            ),
        );
    }
    assert_eq!(seen.len(), 2, "both variants drawn");
}

/// `experiments.global_holdout` holds a customer out of every marketing sequence (SHA-256 of
/// `"{global_salt}:{customer id}"`), ahead of a sequence's own holdout; transactional email
/// still goes out.
#[test]
fn the_global_holdout_keeps_marketing_from_its_customers_in_every_sequence() {
    let policy = Policy {
        global_holdout: Some(aftercare::engine::experiment::GlobalHoldout {
            share: 3_000,
            salt: "g".into(),
        }),
        ..Policy::default()
    };
    let mut env = TestEnv::with(&[HELD, SPLIT], policy);
    let customers: Vec<String> = (1..=12).map(|i| format!("c{i}")).collect();
    for c in &customers {
        env.placed(c, &format!("o-{c}"), "+0s", "bag");
    }
    env.advance("+3d");
    let lines = env.take();
    let mut globally = 0;
    for c in &customers {
        let global = spec_hash(&format!("g:{c}")) % 10_000;
        let local = spec_hash(&format!("t1:held:{c}")) % 10_000;
        let of = |seq_step: &str| {
            lines
                .iter()
                .find(|l| {
                    l.split(' ').nth(1) == Some(c.as_str())
                        && l.contains(seq_step)
                        && !l.contains(" enter ")
                })
                .map(|l| l.splitn(3, ' ').nth(2).unwrap().to_string())
                .unwrap()
        };
        let receipt = of("held/receipt email");
        assert_eq!(receipt, format!("held/receipt email (no wait) [A for {c}]"));
        let (tip, tripod) = (of("held/tip "), of("split/tripod "));
        if global < 3_000 {
            globally += 1;
            let why = format!("holdout (held out of all marketing: bucket {global:04} < 3000)");
            assert_eq!(tip, format!("held/tip {why}"), "{c}");
            assert_eq!(tripod, format!("split/tripod {why}"), "{c}");
        } else {
            assert!(
                tripod.starts_with("split/tripod email (no wait; variant "),
                "{c}: {tripod}"
            );
            let expected = if local < 5_000 {
                format!("held/tip holdout (held out: bucket {local:04} < 5000)")
            } else {
                format!("held/tip email (wait 1d elapsed) [B for {c}]")
            };
            assert_eq!(tip, expected, "{c}");
        }
    }
    assert!(
        (1..12).contains(&globally),
        "{globally} of 12 held out of everything"
    );
}

const EDUCATION: &str = r#"
name: learn
category: education
trigger: { event: order.placed, when: "order.items[0].category == 'camera'" }
steps:
  - id: tip
    wait: 1d
    email: { template: t/a }
"#;

/// SPEC §8's return on relationship: of the customers helped in the last 12 months (a ticket
/// resolved, an education sequence completed), those who ordered again after it, or whom
/// another customer's order names in `data.referred_by` after it.
#[test]
fn return_on_relationship_counts_orders_and_referrals_after_the_help() {
    let mut env = TestEnv::new(&[EDUCATION]);
    let resolved = |env: &mut TestEnv, c: &str, at: &str| {
        env.event(
            "support.ticket_resolved",
            c,
            at,
            json!({"ticket_id": format!("t-{c}")}),
        );
    };
    let referred = |env: &mut TestEnv, c: &str, by: &str, at: &str| {
        env.event("order.placed", c, at, json!({
            "order_id": format!("o-{c}"), "total": "5.00", "currency": "USD", "items": [], "referred_by": by,
        }));
    };
    // Helped long ago, and ordered then: outside the 12 months, not counted.
    resolved(&mut env, "old", "+0s");
    env.placed("old", "o-old", "+1d", "bag");
    // Helped by the education sequence (its step done: complete), then ordered: returned.
    env.placed("ann", "o-ann1", "+400d", "camera");
    env.placed("ann", "o-ann2", "+402d", "bag");
    // Helped, then referred someone: returned.
    resolved(&mut env, "bob", "+400d");
    referred(&mut env, "cat", "bob", "+401d");
    // Referred someone only before the help, and ordered nothing after it: not returned.
    referred(&mut env, "eve", "dan", "+399d");
    resolved(&mut env, "dan", "+400d");
    // Naming themselves counts for nothing.
    resolved(&mut env, "fay", "+400d");
    referred(&mut env, "fay", "fay", "+400d");
    env.advance("+403d");
    let lines = env.take();
    assert!(
        lines.iter().any(|l| l.contains("ann learn/- complete")),
        "{lines:?}"
    );
    let r = env.sim.report().return_on_relationship;
    // ann (her second order came after the course ended a day after the first), bob.
    assert_eq!((r.helped, r.returned), (4, 2), "{lines:?}");
    assert_eq!(r.rate, Some(0.5));
}

const FEEDBACK: &str = r#"
name: feedback
category: feedback
trigger: { event: order.delivered }
steps:
  - id: decide
    wait_for: { event: feedback.submitted, timeout: 7d }
    branch:
      - { when: "event.data.score <= 6", goto: sorry }
      - { when: "event.data.score >= 9", goto: refer }
      - { goto: thanks }
  - id: thanks
    email: { template: t/c }
  - id: stop
    exit: true
  - id: sorry
    email: { template: t/a }
  - id: stop-sorry
    exit: true
  - id: refer
    email: { template: t/b }
"#;

/// SPEC §9 branch: the first arm that holds wins (`when …`), the last without `when` is
/// `otherwise`; without a fallback, no match goes on to the next step.
#[test]
fn branch_takes_the_first_arm_that_holds_else_otherwise_else_the_next_step() {
    let no_fallback = FEEDBACK
        .replace("name: feedback", "name: strict")
        .replace("      - { goto: thanks }\n", "");
    let mut env = TestEnv::new(&[FEEDBACK, &no_fallback]);
    for (c, score) in [("low", 3), ("high", 10), ("mid", 8)] {
        env.event(
            "order.delivered",
            c,
            "+0s",
            json!({"order_id": format!("o-{c}")}),
        );
        env.event(
            "feedback.submitted",
            c,
            "+1h",
            json!({"kind": "nps", "score": score}),
        );
    }
    env.advance("+8d");
    let lines: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| !l.contains(" enter ") && !l.contains("complete"))
        .collect();
    let mine = |c: &str, seq: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains(&format!(" {c} {seq}/")))
            .map(|l| l.split_once(' ').unwrap().1.to_string())
            .collect()
    };
    assert_eq!(
        mine("low", "feedback"),
        [
            "low feedback/decide branch (when event.data.score <= 6)",
            "low feedback/sorry email (no wait) [A for low]",
            "low feedback/stop-sorry exit (exit step)",
        ]
    );
    assert_eq!(
        mine("high", "feedback"),
        [
            "high feedback/decide branch (when event.data.score >= 9)",
            "high feedback/refer email (no wait) [B for high]",
        ]
    );
    assert_eq!(
        mine("mid", "feedback"),
        [
            "mid feedback/decide branch (otherwise)",
            "mid feedback/thanks email (no wait) [C for mid]",
            "mid feedback/stop exit (exit step)",
        ]
    );
    // No fallback: a score of 8 matches nothing and goes on to the next step.
    assert_eq!(
        mine("mid", "strict"),
        [
            "mid strict/decide skip (branch: no arm matched)",
            "mid strict/thanks email (no wait) [C for mid]",
            "mid strict/stop exit (exit step)",
        ]
    );
    assert_eq!(
        mine("low", "strict")[0],
        "low strict/decide branch (when event.data.score <= 6)"
    );
}

const BIRTHDAY: &str = r#"
name: birthday
category: birthday
trigger: { date: customer.birthday, at: "09:00" }
steps:
  - id: wish
    email: { template: t/a }
"#;

const DATES: &str = r#"
name: renewal
category: account
trigger: { date: customer.attributes.renewal, offset: -3d, at: "10:30", repeat: monthly }
steps:
  - id: remind
    email: { template: t/b }
"#;

const ONCE: &str = r#"
name: anniversary
category: account
trigger: { date: customer.attributes.joined, repeat: once, at: "08:00" }
steps:
  - id: thanks
    email: { template: t/c }
"#;

/// SPEC §9 date triggers on the virtual clock: 29 February falls on 28 February in 2027; a
/// birthday learnt a day after it waits for the next year; 09:00 in Auckland is the evening
/// before in UTC; a monthly date with an offset, and a date that fires once.
#[test]
fn date_triggers_start_journeys_on_the_customers_dates_in_their_timezone() {
    let mut env = TestEnv::new(&[BIRTHDAY, DATES, ONCE]);
    let learn = |env: &mut TestEnv, c: &str, at: &str, customer: serde_json::Value| {
        let mut customer = customer;
        customer["email"] = json!(format!("{c}@example.com"));
        env.event("customer.updated", c, at, json!({ "customer": customer }));
    };
    learn(
        &mut env,
        "leap",
        "2027-01-10T00:00:00Z",
        json!({"birthday": "2000-02-29", "timezone": "UTC"}),
    );
    learn(
        &mut env,
        "kiwi",
        "2027-01-10T00:00:00Z",
        json!({"birthday": "1985-06-15", "timezone": "Pacific/Auckland"}),
    );
    learn(
        &mut env,
        "sub",
        "2027-01-20T00:00:00Z",
        json!({"timezone": "UTC", "attributes": {"renewal": "2026-11-30", "joined": "2027-02-01T12:00:00+09:00"}}),
    );
    learn(
        &mut env,
        "late",
        "2027-03-02T00:00:00Z",
        json!({"birthday": "1990-03-01", "timezone": "UTC"}),
    );
    env.advance("2028-03-02T00:00:00Z");
    let lines: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| l.contains(" enter "))
        .collect();
    let of = |c: &str| -> Vec<&str> {
        lines
            .iter()
            .filter(|l| l.split(' ').nth(1) == Some(c))
            .map(String::as_str)
            .collect()
    };
    assert_eq!(
        of("leap"),
        [
            "2027-02-28T09:00:00Z leap birthday/wish enter (date customer.birthday 2000-02-29: 2027-02-28 09:00 UTC)",
            "2028-02-29T09:00:00Z leap birthday/wish enter (date customer.birthday 2000-02-29: 2028-02-29 09:00 UTC)",
        ]
    );
    // Learnt on 2 March 2027: that year's birthday had passed; the next one is sent.
    assert_eq!(
        of("late"),
        [
            "2028-03-01T09:00:00Z late birthday/wish enter (date customer.birthday 1990-03-01: 2028-03-01 09:00 UTC)"
        ]
    );
    // 09:00 on 15 June in Auckland (NZST, UTC+12) is 21:00 UTC on 14 June.
    assert_eq!(
        of("kiwi"),
        [
            "2027-06-14T21:00:00Z kiwi birthday/wish enter (date customer.birthday 1985-06-15: 2027-06-15 09:00 Pacific/Auckland)"
        ]
    );
    let sub = of("sub");
    // Monthly on the 30th (the last day in February), three days before, at 10:30; once on
    // the date an RFC 3339 value has where it was written (1 February), at 08:00.
    assert_eq!(
        &sub[..4],
        [
            "2027-01-27T10:30:00Z sub renewal/remind enter (date customer.attributes.renewal 2026-11-30: 2027-01-27 10:30 UTC)",
            "2027-02-01T08:00:00Z sub anniversary/thanks enter (date customer.attributes.joined 2027-02-01T12:00:00+09:00: 2027-02-01 08:00 UTC)",
            "2027-02-25T10:30:00Z sub renewal/remind enter (date customer.attributes.renewal 2026-11-30: 2027-02-25 10:30 UTC)",
            "2027-03-27T10:30:00Z sub renewal/remind enter (date customer.attributes.renewal 2026-11-30: 2027-03-27 10:30 UTC)",
        ]
    );
    assert_eq!(
        sub.iter().filter(|l| l.contains("anniversary")).count(),
        1,
        "once is once"
    );
    assert_eq!(
        sub.iter().filter(|l| l.contains("renewal")).count(),
        14,
        "{sub:#?}"
    );
}

const FILM: &str = r#"
name: film-reorder
category: cross_sell
journey: per_order
trigger: { reorder: { category: film, after: 30d, per_quantity: true } }
steps:
  - id: remind
    email: { template: t/a }
  - id: again
    wait: 7d
    email: { template: t/b }
"#;

/// SPEC §9 reorder triggers: a per_order journey starts `after` the order (times the quantity
/// of the category), the interval in the reason; a new order of the category ends the journey
/// and the reminder of the earlier order (`exit`, `reordered`).
#[test]
fn reorder_reminders_start_after_the_order_and_a_reorder_ends_them() {
    let mut env = TestEnv::new(&[FILM]);
    env.event("order.placed", "two", "+0s", json!({
        "order_id": "o1", "total": "20.00", "currency": "USD",
        "items": [{"sku": "film-1", "name": "Film", "category": "film", "quantity": 2, "unit_price": "10.00"}],
    }));
    env.placed("buyer", "b1", "+0s", "film");
    env.placed("buyer", "b2", "+10d", "film");
    env.placed("buyer", "b3", "+45d", "film");
    env.placed("other", "x1", "+0s", "camera");
    env.advance("+100d");
    let lines = env.take();
    let of = |c: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.split(' ').nth(1) == Some(c))
            .map(|l| l.to_string())
            .collect()
    };
    assert_eq!(
        of("two"),
        [
            "2024-03-01T00:00:00Z two film-reorder/remind enter (reorder film: 60d after order o1 (30d × 2))",
            "2024-03-01T00:00:00Z two film-reorder/remind email (no wait) [A for two]",
            "2024-03-08T00:00:00Z two film-reorder/again email (wait 7d elapsed) [B for two]",
            "2024-03-08T00:00:00Z two film-reorder/- complete (all steps done)",
        ]
    );
    // b1's reminder is dropped by b2; b2's journey, started 30 days on, ends at b3; b3's runs.
    assert_eq!(
        of("buyer"),
        [
            "2024-02-10T00:00:00Z buyer film-reorder/remind enter (reorder film: 30d after order b2)",
            "2024-02-10T00:00:00Z buyer film-reorder/remind email (no wait) [A for buyer]",
            "2024-02-15T00:00:00Z buyer film-reorder/again exit (reordered)",
            "2024-03-16T00:00:00Z buyer film-reorder/remind enter (reorder film: 30d after order b3)",
            "2024-03-16T00:00:00Z buyer film-reorder/remind email (no wait) [A for buyer]",
            "2024-03-23T00:00:00Z buyer film-reorder/again email (wait 7d elapsed) [B for buyer]",
            "2024-03-23T00:00:00Z buyer film-reorder/- complete (all steps done)",
        ]
    );
    assert!(of("other").is_empty());
}

const MEASURED: &str = r#"
name: measured
category: education
trigger: { event: order.delivered }
journey: per_order
experiment:
  holdout: 50%
  salt: race
  measure:
    - { name: again, event: order.placed, within: 30d }
steps:
  - id: tip
    email: { template: t/a }
"#;

/// Events that overtake each other count as in order: an order placed after the delivery
/// that enters the customer, but applied before it, is a conversion; a later delivery
/// applied first does not move the window when the earlier one arrives.
#[test]
fn measures_count_as_in_order_when_the_entry_arrives_late() {
    let mut env = TestEnv::new(&[MEASURED]);
    // Each at most days late: within policy.max_event_age, so they still enrol.
    env.placed("c1", "o2", "+5d", "bag");
    env.event("order.delivered", "c1", "+1d", json!({"order_id": "o1"}));
    env.event("order.delivered", "c2", "+6d", json!({"order_id": "o4"}));
    env.event("order.delivered", "c2", "+1d", json!({"order_id": "o3"}));
    env.placed("c2", "o5", "+3d", "bag");
    env.advance("+200d");
    let m = &env.sim.report().experiments[0].measures[0];
    let (customers, converted) = (
        m.treated.customers + m.held_out.customers,
        m.treated.converted + m.held_out.converted,
    );
    // c1: o2 (day 5) came after the delivery on day 1; c2: o5 (day 3) came after the first
    // delivery (day 1), where the window starts, though before the one applied first (day 6).
    assert_eq!((customers, converted), (2, 2));
}

const LATER_BIRTHDAY: &str = r#"
name: later
category: birthday
trigger: { date: customer.birthday, offset: 400d }
steps:
  - id: wish
    email: { template: t/b }
"#;

/// One journey per occurrence, whatever the events repeat: a shop sends the customer block
/// with every event, and a timezone learnt after the occurrence fired does not fire it again
/// (nor a `once` date); a timezone learnt before it moves it; an occurrence at the instant of
/// the event that teaches the date runs after it (SPEC: ties); an offset of more than a year
/// still fires every year.
#[test]
fn date_occurrences_fire_once_whatever_the_events_repeat() {
    let mut env = TestEnv::new(&[BIRTHDAY, ONCE, LATER_BIRTHDAY]);
    let learn = |env: &mut TestEnv, c: &str, at: &str, mut customer: serde_json::Value| {
        customer["email"] = json!(format!("{c}@example.com"));
        env.event("customer.updated", c, at, json!({ "customer": customer }));
    };
    learn(
        &mut env,
        "again",
        "2025-01-01T00:00:00Z",
        json!({"birthday": "1990-03-10"}),
    );
    learn(
        &mut env,
        "once",
        "2025-01-01T00:00:00Z",
        json!({"attributes": {"joined": "2025-03-10"}}),
    );
    learn(
        &mut env,
        "seoul",
        "2025-01-01T00:00:00Z",
        json!({"birthday": "1990-03-10"}),
    );
    learn(
        &mut env,
        "seoul",
        "2025-01-02T00:00:00Z",
        json!({"timezone": "Asia/Seoul"}),
    );
    learn(
        &mut env,
        "again",
        "2025-03-10T12:00:00Z",
        json!({"birthday": "1990-03-10", "timezone": "America/Los_Angeles"}),
    );
    learn(
        &mut env,
        "once",
        "2025-03-10T12:00:00Z",
        json!({"timezone": "America/Los_Angeles"}),
    );
    learn(
        &mut env,
        "tie",
        "2025-03-11T09:00:00Z",
        json!({"birthday": "1990-03-11"}),
    );
    env.advance("2026-08-01T00:00:00Z");
    let enters: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| l.contains(" enter "))
        .map(|l| {
            let (at, rest) = l.split_once(' ').unwrap();
            let (who, rest) = rest.split_once(' ').unwrap();
            format!("{at} {who} {}", rest.split_once(' ').unwrap().0)
        })
        .collect();
    assert_eq!(
        enters,
        [
            "2025-03-10T00:00:00Z seoul birthday/wish",
            "2025-03-10T08:00:00Z once anniversary/thanks",
            "2025-03-10T09:00:00Z again birthday/wish",
            "2025-03-11T09:00:00Z tie birthday/wish",
            // 400 days after the 2024 birthdays, then after the 2025 ones.
            "2025-04-14T00:00:00Z seoul later/wish",
            "2025-04-14T16:00:00Z again later/wish",
            "2025-04-15T09:00:00Z tie later/wish",
            "2026-03-10T00:00:00Z seoul birthday/wish",
            "2026-03-10T16:00:00Z again birthday/wish",
            "2026-03-11T09:00:00Z tie birthday/wish",
            "2026-04-14T00:00:00Z seoul later/wish",
            "2026-04-14T16:00:00Z again later/wish",
            "2026-04-15T09:00:00Z tie later/wish",
        ]
    );
}

/// A reorder that arrives late (older than `policy.max_event_age`) enrols nobody, but it is
/// still a reorder: the earlier order's pending reminder is dropped.
#[test]
fn a_late_reorder_drops_the_pending_reminder() {
    let mut env = TestEnv::new(&[FILM]);
    env.placed("late", "o1", "+0s", "film");
    env.placed("clock", "x", "+19d", "bag");
    env.placed("late", "o2", "+9d", "film");
    env.advance("+100d");
    let lines: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| l.contains(" late "))
        .collect();
    assert!(lines.is_empty(), "{lines:?}");
}

/// Attributes are merged (null removes one) and bounded: a name over 64 bytes, a value over
/// 4 KiB of JSON and names past the 64th are dropped.
#[test]
fn attributes_merge_and_stay_bounded() {
    let mut env = TestEnv::new(&[BIRTHDAY]);
    let mut attributes = serde_json::Map::new();
    attributes.insert("tier".into(), json!("gold"));
    attributes.insert("gone".into(), json!(1));
    attributes.insert("n".repeat(65), json!(1));
    attributes.insert("blob".into(), json!("x".repeat(5000)));
    let customer = |a: serde_json::Map<String, serde_json::Value>| json!({"email": "k@example.com", "attributes": a});
    env.event(
        "customer.updated",
        "k",
        "+0s",
        json!({ "customer": customer(attributes) }),
    );
    let more: serde_json::Map<String, serde_json::Value> =
        (0..70).map(|i| (format!("a{i:02}"), json!(i))).collect();
    env.event(
        "customer.updated",
        "k",
        "+0s",
        json!({ "customer": customer(more) }),
    );
    let mut removal = serde_json::Map::new();
    removal.insert("gone".into(), serde_json::Value::Null);
    removal.insert("tier".into(), json!("platinum"));
    env.event(
        "customer.updated",
        "k",
        "+1s",
        json!({ "customer": customer(removal) }),
    );
    let kept = env
        .sim
        .customer("k")
        .unwrap()
        .profile
        .attributes
        .clone()
        .unwrap();
    assert_eq!(kept.get("tier"), Some(&json!("platinum")));
    assert!(!kept.contains_key("gone") && !kept.contains_key("blob"));
    assert!(!kept.keys().any(|k| k.len() > 64));
    assert_eq!(kept.len(), 63, "64 at most, one since removed");
}

/// SPEC §9 webhooks: a `webhook` decision queues a post, held to the marketing rules as an
/// email is (unsubscribes, quiet hours, the cap), with no address needed and a bounced one
/// stopping nothing.
#[test]
fn a_webhook_step_is_decided_by_the_rules_email_follows_without_needing_an_address() {
    let sms = "name: sms\ncategory: transactional\ntrigger: { event: order.shipped }\nsteps:\n  - id: text\n    webhook: { endpoint: sms, body: t/hook }\n";
    let crm = "name: crm\ncategory: cross_sell\ntrigger: { event: order.delivered }\nsteps:\n  - id: task\n    webhook: { endpoint: crm, body: t/hook }\n";
    let policy = Policy {
        quiet_hours: Some("21:00-08:00".parse().unwrap()),
        ..Policy::default()
    };
    let mut env = TestEnv::with(&[sms, crm], policy);
    // No email address: a webhook still goes.
    let no_address = json!({"order_id": "o1", "carrier": "DHL", "tracking_number": "1",
        "customer": {"name": "Ann"}});
    env.event("order.shipped", "ann", "+1h", no_address);
    // Bounced: the transactional SMS goes; unsubscribed from cross_sell: the CRM task not.
    env.event("customer.updated", "bob", "+0s", json!({}));
    env.bounce("bob");
    let shipped = json!({"order_id": "o2", "carrier": "DHL", "tracking_number": "2"});
    env.event("order.shipped", "bob", "+1h", shipped);
    env.event(
        "customer.unsubscribed",
        "cat",
        "+0s",
        json!({"categories": ["cross_sell"]}),
    );
    env.event("order.delivered", "cat", "+2h", json!({"order_id": "o3"}));
    // Marketing at 22:00 waits for the end of quiet hours.
    env.event("order.delivered", "dan", "+22h", json!({"order_id": "o4"}));
    env.advance("+2d");
    let decisions = env.take_decisions();
    let lines: Vec<String> = decisions
        .iter()
        .map(common::compact)
        .filter(|l| !l.contains(" enter ") && !l.contains(" complete "))
        .collect();
    assert_eq!(
        lines,
        [
            "2024-01-01T01:00:00Z ann sms/text webhook (no wait; endpoint sms)",
            "2024-01-01T01:00:00Z bob sms/text webhook (no wait; endpoint sms)",
            "2024-01-01T02:00:00Z cat crm/task suppress (unsubscribed from cross_sell)",
            "2024-01-01T22:00:00Z dan crm/task defer (quiet hours 21:00-08:00 (UTC): until 2024-01-02T08:00:00Z)",
            "2024-01-02T08:00:00Z dan crm/task webhook (quiet hours over; endpoint crm)",
        ]
    );
    // The post is queued for the outbox with its endpoint and body, and no subject.
    let posted: Vec<_> = decisions
        .iter()
        .filter_map(|d| Some((d.email.as_ref()?, d.subject.as_ref())))
        .collect();
    assert_eq!(posted.len(), 3);
    for (intent, subject) in posted {
        assert_eq!(&*intent.template, "t/hook");
        assert!(matches!(intent.endpoint.as_deref(), Some("sms" | "crm")));
        assert_eq!(subject, None);
    }
}

/// SPEC §9 `after: auto`: the median interval between consecutive orders of the category
/// among the repeat buyers, as computed at the start of the order's day — with at least 30
/// of them; with fewer, the `fallback`. The interval and where it came from are in the reason.
#[test]
fn after_auto_uses_the_median_of_30_repeat_buyers_else_the_fallback() {
    let auto = FILM.replace("after: 30d", "after: auto, fallback: 30d");
    let probe = |env: &mut TestEnv, at: &str| {
        env.event("order.placed", "probe", at, json!({
            "order_id": "p1", "total": "20.00", "currency": "USD",
            "items": [{"sku": "film-1", "name": "Film", "category": "film", "quantity": 2, "unit_price": "10.00"}],
        }));
    };
    let probe_enters = |env: &mut TestEnv| -> Vec<String> {
        env.take()
            .into_iter()
            .filter(|l| l.contains(" probe ") && l.contains(" enter "))
            .collect()
    };
    // 29 repeat buyers (a pair of orders 14 days apart, and one more buyer who bought once):
    // too few, the fallback.
    let mut env = TestEnv::new(&[&auto]);
    for i in 0..29 {
        env.placed(&format!("b{i}"), &format!("b{i}-1"), "+0s", "film");
        env.placed(&format!("b{i}"), &format!("b{i}-2"), "+14d", "film");
    }
    env.placed("once", "x1", "+1d", "film");
    probe(&mut env, "+20d");
    env.advance("+100d");
    assert_eq!(
        probe_enters(&mut env),
        [
            "2024-03-21T00:00:00Z probe film-reorder/remind enter (reorder film: 60d after order p1 (30d × 2; after: auto, the fallback: 29 repeat buyers of film, fewer than 30))"
        ]
    );
    // 30 of them, half 10 days apart and half 20: the median is 15 days. A repeat order on
    // the probe's own day counts from the next day only.
    let mut env = TestEnv::new(&[&auto]);
    for i in 0..30 {
        let gap = if i % 2 == 0 { "+10d" } else { "+20d" };
        env.placed(&format!("b{i}"), &format!("b{i}-1"), "+0s", "film");
        env.placed(&format!("b{i}"), &format!("b{i}-2"), gap, "film");
    }
    env.placed("late", "l1", "+1d", "film");
    env.placed("late", "l2", "+25d", "film");
    probe(&mut env, "+25d");
    env.advance("+100d");
    assert_eq!(
        probe_enters(&mut env),
        [
            "2024-02-25T00:00:00Z probe film-reorder/remind enter (reorder film: 30d after order p1 (15d × 2; after: auto, the median of 30 repeat buyers))"
        ]
    );
}

/// The outbox keys an email by (journey, step): two customers born on one day (or two with
/// the same order id) must not share a journey, or one of them gets nothing.
#[test]
fn customers_sharing_a_birthday_or_an_order_id_get_journeys_of_their_own() {
    let auto = FILM.replace("after: 30d, per_quantity: true", "after: 10d");
    let mut env = TestEnv::new(&[BIRTHDAY, &auto]);
    for c in ["ann", "bob"] {
        let customer = json!({"email": format!("{c}@example.com"), "birthday": "1990-01-05"});
        env.event(
            "customer.updated",
            c,
            "+0s",
            json!({ "customer": customer }),
        );
        env.placed(c, "o-1", "+0s", "film");
    }
    env.advance("+20d");
    let decisions = env.take_decisions();
    for sequence in ["birthday", "film-reorder"] {
        let journeys: std::collections::BTreeSet<String> = decisions
            .iter()
            .filter(|d| &*d.sequence == sequence && d.email.is_some())
            .map(|d| format!("{}", d.journey))
            .collect();
        assert_eq!(journeys.len(), 2, "{sequence}: {decisions:?}");
    }
}

/// An order that arrives after a newer one of the category (placed later, sent earlier)
/// changes nothing: the newer order's reminder stands, and the stale one gets none.
#[test]
fn a_late_older_order_does_not_end_the_newer_orders_reminder() {
    let mut env = TestEnv::new(&[FILM]);
    env.placed("z", "p2", "+4d", "film");
    env.placed("z", "p1", "2024-01-01T00:00:00Z", "film");
    env.advance("+100d");
    let lines: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| l.contains(" enter ") || l.contains(" exit "))
        .collect();
    assert_eq!(
        lines,
        ["2024-02-04T00:00:00Z z film-reorder/remind enter (reorder film: 30d after order p2)"]
    );
}

const TRIPOD: &str = r#"
name: tripod
category: cross_sell
journey: per_order
trigger: { event: order.delivered }
steps:
  - id: offer
    email: { template: t/coupon }
    coupon: { generate: { prefix: "TRI-", length: 8 } }
"#;

/// SPEC §9 coupons: a generated code is derived from the step's idempotency key — the same
/// for the decision, its subject and the email sent — shown on the timeline, and an order
/// that uses it is that step's goal, once.
#[test]
fn a_generated_coupon_is_on_the_timeline_and_its_use_is_the_steps_goal() {
    let secret = aftercare::engine::coupon::key_from(b"test-signing-key-of-at-least-32-bytes");
    let policy = Policy {
        coupon_key: Some(secret.clone().into()),
        ..Policy::default()
    };
    let mut env = TestEnv::with(&[TRIPOD], policy);
    env.event("order.delivered", "ann", "+0s", json!({"order_id": "o1"}));
    env.event("order.delivered", "bob", "+0s", json!({"order_id": "o2"}));
    let sent = env.take_decisions();
    let offers: Vec<_> = sent.iter().filter(|d| d.email.is_some()).collect();
    assert_eq!(offers.len(), 2);
    let code_of = |d: &aftercare::engine::Decision| {
        let key = format!("{}:offer", d.journey);
        aftercare::engine::coupon::generate(&secret, &d.customer, &key, "TRI-", 8)
    };
    let (ann, bob) = (code_of(offers[0]), code_of(offers[1]));
    assert_ne!(ann, bob);
    assert_eq!(offers[0].reason, format!("no wait; coupon {ann}"));
    assert_eq!(
        offers[0].subject.as_deref(),
        Some(&*format!("Your code: {ann}"))
    );
    // Used on an order (any case): the step's goal, once; someone else's code counts for nobody.
    let used = |order: &str, code: &str| json!({"order_id": order, "total": "10.00", "currency": "USD", "items": [], "coupon": code});
    env.event(
        "order.placed",
        "ann",
        "+3d",
        used("o3", &ann.to_lowercase()),
    );
    env.event("order.placed", "ann", "+4d", used("o4", &ann));
    env.event("order.placed", "ann", "+5d", used("o5", &bob));
    let goals: Vec<String> = env
        .take()
        .into_iter()
        .filter(|l| l.contains(" goal "))
        .collect();
    assert_eq!(
        goals,
        [format!(
            "2024-01-04T00:00:00Z ann tripod/offer goal (coupon {ann} used on order o3)"
        )]
    );
}
