//! The operator surface in-process: metrics, probes and the admin API following a stream on
//! both stores, and the admin API closed without a token.

use super::*;

/// One stream through a running service; everything an operator can see of it.
const SIGNING_KEY: &str = "ops-test-signing-key-of-32-bytes-or-more";

fn operator_surface(store: &TestStore) {
    let kafka = cluster();
    let brokers = kafka.bootstrap_servers();
    let seqs = sequences_dir(
        &format!("ops-{}", store.url.len()),
        &[("thanks.yaml", THANKS)],
    );
    let mut cfg = config(&brokers, "ops", &store.url, &seqs, &seqs.join("mail"));
    cfg.secrets.admin_token = Some(TOKEN.into());
    cfg.secrets.signing_key = Some(SIGNING_KEY.into());
    cfg.http.figures_refresh = "1s".into();
    cfg.http.nps_window = "30d".into();
    let service = start(cfg);
    let at = addr(&service);

    // Before anything flows: the families are there, with nothing counted.
    let m = metrics(at);
    assert!(
        m.contains("# TYPE aftercare_send_duration_seconds histogram"),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "aftercare_events_total{type=\"order.placed\",outcome=\"applied\"}"
        ),
        None
    );

    let p = producer(&brokers);
    for (c, o) in [("ann", "o1"), ("bob", "o2"), ("cat", "o3")] {
        send(&p, "orders", c, placed(c, o).as_bytes(), &[]);
    }
    // A redelivery, a malformed message, three NPS answers and a review (ann's goal).
    send(&p, "orders", "ann", placed("ann", "o1").as_bytes(), &[]);
    send(&p, "orders", "x", b"{not json", &[]);
    nps(&p, &[("ann", 10), ("bob", 9), ("cat", 3)]);
    flush(&p);
    wait_until(60, "the receipts sent", || {
        sample(
            &metrics(at),
            "aftercare_emails_total{sequence=\"thanks\",step=\"receipt\",outcome=\"sent\"}",
        ) == Some(3.0)
    });
    // The receipt armed its goal; the review meets it.
    let review = event(
        "r-ann",
        "review.submitted",
        "ann",
        json!({"order_id": "o1", "sku": "s1", "rating": 5}),
    );
    send(&p, "support", "ann", review.as_bytes(), &[]);
    flush(&p);
    wait_until(60, "every event applied", || {
        let m = metrics(at);
        sample(
            &m,
            "aftercare_events_total{type=\"review.submitted\",outcome=\"applied\"}",
        ) == Some(1.0)
            && sample(
                &m,
                "aftercare_events_total{type=\"invalid\",outcome=\"dead_lettered\"}",
            ) == Some(1.0)
    });
    let m = metrics(at);
    let count = |series: &str| sample(&m, series).unwrap_or_else(|| panic!("no {series} in\n{m}"));
    assert_eq!(
        count("aftercare_events_total{type=\"order.placed\",outcome=\"applied\"}"),
        3.0
    );
    assert_eq!(
        count("aftercare_events_total{type=\"order.placed\",outcome=\"duplicate\"}"),
        1.0
    );
    assert_eq!(
        count("aftercare_events_total{type=\"feedback.submitted\",outcome=\"applied\"}"),
        3.0
    );
    assert_eq!(
        count(
            "aftercare_decisions_total{sequence=\"thanks\",step=\"receipt\",action=\"enter\",reason=\"trigger order.placed\"}"
        ),
        3.0
    );
    assert_eq!(
        count(
            "aftercare_decisions_total{sequence=\"thanks\",step=\"receipt\",action=\"email\",reason=\"no wait\"}"
        ),
        3.0
    );
    assert_eq!(
        count(
            "aftercare_decisions_total{sequence=\"thanks\",step=\"receipt\",action=\"goal\",reason=\"review.submitted within\"}"
        ),
        1.0
    );
    assert_eq!(
        count("aftercare_emails_total{sequence=\"thanks\",step=\"receipt\",outcome=\"queued\"}"),
        3.0
    );
    assert_eq!(count("aftercare_send_duration_seconds_count"), 3.0);
    assert_eq!(count("aftercare_event_to_send_seconds_count"), 3.0);
    // The store-backed gauges follow on the next refresh (every second here).
    // (A refresh may fall between two events: wait for one after the last.)
    wait_until(30, "journey gauges, NPS and goals refreshed", || {
        let m = metrics(at);
        sample(
            &m,
            "aftercare_journeys{sequence=\"thanks\",step=\"followup\",status=\"due\"}",
        ) == Some(3.0)
            && sample(&m, "aftercare_nps_responses") == Some(3.0)
            && sample(
                &m,
                "aftercare_retention{sequence=\"thanks\",step=\"\",figure=\"goals\"}",
            ) == Some(1.0)
    });
    let m = metrics(at);
    // (2 promoters - 1 detractor) / 3 answers.
    let nps = sample(&m, "aftercare_nps").unwrap();
    assert!((nps - 100.0 / 3.0).abs() < 1e-9, "{nps}");
    assert_eq!(
        sample(
            &m,
            "aftercare_retention{sequence=\"thanks\",step=\"\",figure=\"entered\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, "aftercare_goal_conversion_rate{sequence=\"thanks\"}"),
        Some(1.0 / 3.0)
    );
    assert_eq!(sample(&m, "aftercare_outbox_pending"), Some(0.0));
    wait_until(30, "consumer lag reported", || {
        metrics(at).contains("aftercare_consumer_lag{topic=\"orders\",partition=\"")
    });

    // The admin API: nothing without the token, or with a wrong one.
    let closed = json!({"error": "missing or wrong bearer token (Authorization: Bearer $AFTERCARE_ADMIN_TOKEN)"});
    for token in [None, Some("wrong"), Some("")] {
        for path in [
            "/api/customers/ann",
            "/api/sequences",
            "/api/figures",
            "/customers/ann",
        ] {
            let (status, body) = get(at, path, token);
            assert_eq!((status, json_of(&body)), (401, closed.clone()), "{path}");
        }
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let (status, _) = common::http::request(
            at,
            "POST",
            "/api/customers/ann/journeys/0000000000000001/cancel",
            &headers,
            "",
        );
        assert_eq!(status, 401);
    }
    assert_eq!(get(at, "/readyz", None), (200, "ready\n".to_string()));
    assert_eq!(get(at, "/healthz", None), (200, "ok\n".to_string()));

    let (status, body) = get(at, "/api/customers/ann", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let ann = json_of(&body);
    assert_eq!(ann["profile"]["orders_count"], 1);
    let lines: Vec<(String, String, String)> = ann["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["step"].as_str().unwrap_or("-").to_string(),
                t["action"].as_str().unwrap().to_string(),
                t["reason"].as_str().unwrap().to_string(),
            )
        })
        // Delivery and profile lines are written after the batch's decisions: checked apart.
        .filter(|(_, action, _)| action != "sent" && action != "feedback")
        .collect();
    let line = |s: &str, a: &str, r: &str| (s.to_string(), a.to_string(), r.to_string());
    assert_eq!(
        lines,
        vec![
            line("receipt", "enter", "trigger order.placed"),
            line("receipt", "email", "no wait"),
            line("receipt", "goal", "review.submitted within 30d"),
        ]
    );
    let feedback: Vec<&Value> = ann["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["action"] == "feedback")
        .collect();
    assert_eq!(feedback.len(), 1);
    assert_eq!(
        (&feedback[0]["journey"], &feedback[0]["reason"]),
        (&json!("-"), &json!("nps 10"))
    );
    let journey = ann["journeys"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(ann["journeys"][0]["step_id"], "followup");
    assert_eq!(
        get(at, "/api/customers/nobody", Some(TOKEN)),
        (404, json!({"error": "no such customer"}).to_string())
    );

    let (status, body) = get(at, "/api/sequences", Some(TOKEN));
    assert_eq!(status, 200);
    let seqs_json = json_of(&body);
    assert_eq!(seqs_json["loaded"][0]["name"], "thanks");
    assert_eq!(
        seqs_json["loaded"][0]["steps"],
        json!(["receipt", "followup"])
    );
    let version = seqs_json["loaded"][0]["version"].as_str().unwrap();
    assert_eq!(
        seqs_json["in_flight"],
        json!([{"sequence": "thanks", "version": version, "step": "followup",
                "status": "due", "count": 3, "current": true}])
    );

    // Pause, resume and cancel ann's journey; each lands on her timeline.
    let control = |op: &str| {
        let (status, body) = post(
            at,
            &format!("/api/customers/ann/journeys/{journey}/{op}"),
            TOKEN,
        );
        (status, json_of(&body))
    };
    let decision = |action: &str, reason: &str| {
        json!({"decisions": [{"at": "", "sequence": "thanks", "step": "followup",
                              "action": action, "reason": reason, "subject": null}]})
    };
    let without_at = |(status, mut v): (u16, Value)| {
        if let Some(d) = v["decisions"].as_array_mut() {
            for d in d {
                d["at"] = json!("");
            }
        }
        (status, v)
    };
    assert_eq!(
        without_at(control("pause")),
        (200, decision("pause", "paused by an operator"))
    );
    assert_eq!(
        control("pause"),
        (409, json!({"error": "the journey is already paused"}))
    );
    let (_, body) = get(at, "/api/customers/ann", Some(TOKEN));
    assert_eq!(json_of(&body)["journeys"][0]["held"], true);
    assert_eq!(
        without_at(control("resume")),
        (200, decision("resume", "resumed by an operator"))
    );
    assert_eq!(
        control("resume"),
        (409, json!({"error": "the journey is not paused"}))
    );
    assert_eq!(
        without_at(control("cancel")),
        (200, decision("exit", "cancelled by an operator"))
    );
    assert_eq!(
        control("cancel"),
        (
            404,
            json!({"error": "the customer has no journey in flight with this id"})
        )
    );
    assert_eq!(
        control("explode"),
        (
            404,
            json!({"error": "unknown operation: use pause, resume or cancel"})
        )
    );

    // The retention figures, once refreshed after the cancel.
    wait_until(30, "figures refreshed after the cancel", || {
        let (_, body) = get(at, "/api/figures", Some(TOKEN));
        json_of(&body)["sequences"][0]["in_flight"] == 2
    });
    let (_, body) = get(at, "/api/figures", Some(TOKEN));
    let f = json_of(&body);
    let s = &f["sequences"][0];
    assert_eq!(
        (
            &s["name"],
            &s["entered"],
            &s["goals"],
            &s["exited"],
            &s["conversion_rate"]
        ),
        (
            &json!("thanks"),
            &json!(3),
            &json!(1),
            &json!(1),
            &json!(1.0 / 3.0)
        )
    );
    assert_eq!(
        s["steps"][0],
        json!({"id": "receipt", "emailed": 3, "sent": 3, "dry_run": 0, "pending": 0,
               "suppressed": {}, "skipped": 0, "deferred": 0, "failed": 0, "bounced": 0,
               "in_flight": 0})
    );
    assert_eq!(s["steps"][1]["in_flight"], 2);
    assert_eq!(
        (
            &f["nps"]["responses"],
            &f["nps"]["promoters"],
            &f["nps"]["detractors"]
        ),
        (&json!(3), &json!(2), &json!(1))
    );
    assert_eq!(f["dead_letters"], 1);
    assert_eq!(f["customers"], 3);
    assert_eq!(f["repeat_purchase_rate"], 0.0);

    // Erasure: by an operator through the API, and by a shop's privacy pipeline on Kafka.
    let delete = |path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let (status, body) = common::http::request(at, "DELETE", path, &headers, "");
        (status, body)
    };
    assert_eq!(delete("/api/customers/ann", None).0, 401);
    assert_eq!(
        delete("/api/customers/ann%0Aall", Some(TOKEN)),
        (
            400,
            json!({"error": "the customer id contains the control character U+000A at byte 3; identifiers may not contain control characters"}).to_string()
        )
    );
    assert_eq!(delete("/api/customers/ann", Some(TOKEN)).0, 204);
    assert_eq!(get(at, "/api/customers/ann", Some(TOKEN)).0, 404);
    // A link from an email sent before the erasure answers, and brings nothing back.
    let token =
        aftercare::mail::token::Signer::new(SIGNING_KEY.as_bytes()).sign("ann", "marketing");
    let (status, _) = common::http::request(
        at,
        "POST",
        &format!("/u/{token}"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "List-Unsubscribe=One-Click",
    );
    assert_eq!(status, 200);
    assert_eq!(get(at, "/api/customers/ann", Some(TOKEN)).0, 404);
    let erased = event("x-bob", "customer.erased", "bob", json!({}));
    send(&p, "support", "bob", erased.as_bytes(), &[]);
    flush(&p);
    wait_until(60, "bob erased", || {
        get(at, "/api/customers/bob", Some(TOKEN)).0 == 404
    });
    for who in ["ann", "bob"] {
        // The address anywhere; the id as a whole value or quoted inside one.
        let left = store.rows_containing(&[
            &format!("{who}@example.com"),
            &format!("| {who} |"),
            &format!("\"{who}\""),
        ]);
        assert_eq!(left, Vec::<String>::new(), "{who} {}", store.url);
        assert_eq!(
            store.count(&format!(
                "SELECT COUNT(*) FROM timeline WHERE customer = '{who}'"
            )),
            0
        );
    }
    assert_eq!(get(at, "/api/customers/cat", Some(TOKEN)).0, 200);
    service.stop();
}

#[test]
fn metrics_and_the_admin_api_follow_a_stream_on_sqlite() {
    operator_surface(&TestStore::sqlite());
}

#[test]
fn metrics_and_the_admin_api_follow_a_stream_on_postgres() {
    operator_surface(&TestStore::postgres());
}

#[test]
fn the_admin_api_stays_closed_without_a_token() {
    let kafka = cluster();
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seqs = sequences_dir("ops-closed", &[("thanks.yaml", THANKS)]);
    let cfg = config(
        &brokers,
        "ops-closed",
        &store.url,
        &seqs,
        &seqs.join("mail"),
    );
    let service = start(cfg);
    let at = addr(&service);
    for token in [None, Some(""), Some("anything")] {
        let (status, body) = get(at, "/api/sequences", token);
        assert_eq!(
            (status, json_of(&body)),
            (
                401,
                json!({"error": "the admin API is closed: set AFTERCARE_ADMIN_TOKEN to open it"})
            )
        );
    }
    // Probes and metrics stay open: they carry no customer data.
    assert_eq!(get(at, "/healthz", None).0, 200);
    assert_eq!(get(at, "/metrics", None).0, 200);
    service.stop();
}
