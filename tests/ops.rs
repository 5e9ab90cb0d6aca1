//! The operators' surface of `run`: Prometheus metrics moving as a stream flows, the admin API
//! (bearer token, customers, sequences, journey control, retention figures), readiness, and
//! the dashboard in a real browser (Debian's Chromium, headless).

mod common;

use std::net::SocketAddr;

use common::http::{get, post, sample};
use common::service::{Running, config, flush, producer, send, sequences_dir, start, wait_until};
use common::stores::TestStore;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use serde_json::{Value, json};

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

/// A collector for OTLP/HTTP JSON: keeps every request body.
struct Collector {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Collector {
    fn start() -> Collector {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            break;
                        }
                        if let Ok(v) = serde_json::from_slice(&body) {
                            kept.lock().unwrap().push(v);
                        }
                        let _ = reader.get_mut().write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                        );
                        length = 0;
                    }
                }
            }
        });
        Collector { port, bodies }
    }

    /// Every span received: (name, traceId, spanId, parentSpanId, attributes as key → value).
    fn spans(&self) -> Vec<(String, String, String, String, Value)> {
        let mut out = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for s in ss["spans"].as_array().into_iter().flatten() {
                        let mut attrs = serde_json::Map::new();
                        for a in s["attributes"].as_array().into_iter().flatten() {
                            let v = a["value"]
                                .as_object()
                                .and_then(|o| o.values().next().cloned());
                            attrs.insert(
                                a["key"].as_str().unwrap().to_string(),
                                v.unwrap_or(Value::Null),
                            );
                        }
                        let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
                        out.push((
                            text("name"),
                            text("traceId"),
                            text("spanId"),
                            text("parentSpanId"),
                            Value::Object(attrs),
                        ));
                    }
                }
            }
        }
        out
    }
}

/// A child process killed if the test fails before stopping it.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a JSON log file, parsed (each must be JSON).
fn log_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line not JSON ({e}): {l}")))
        .collect()
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

/// `aftercare run` as a process: JSON logs, traces to an OTLP collector continuing the
/// producer's `traceparent`, and hot reload refusing a broken file and taking a good one.
#[test]
fn the_binary_traces_from_the_producer_and_reloads_only_good_sequences() {
    let kafka = cluster();
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seqs = sequences_dir("ops-bin", &[("thanks.yaml", THANKS)]);
    let collector = Collector::start();
    let dir = seqs.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("aftercare.toml");
    std::fs::write(
        &config_file,
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"ops-bin\"\nsession_timeout_ms = 6000\nmax_poll_interval_ms = 6000\n\
             [store]\nurl = \"{}\"\n[mail]\ntransport = \"file\"\n[mail.file]\ndir = \"{}\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\nfigures_refresh = \"1s\"\n\
             [sequences]\ndir = \"{}\"\nwatch_interval = \"1s\"\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\n\
             [trace]\notlp_endpoint = \"http://127.0.0.1:{}/v1/traces\"\nprotocol = \"http/json\"\n",
            store.url,
            dir.join("mail").display(),
            seqs.display(),
            collector.port
        ),
    )
    .unwrap();
    let log = dir.join("stderr.log");
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_aftercare"))
            .args(["run", "-c"])
            .arg(&config_file)
            .env_remove("AFTERCARE_LOG")
            .env("AFTERCARE_ADMIN_TOKEN", TOKEN)
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut at: Option<SocketAddr> = None;
    wait_until(60, "the service to listen", || {
        at = log_lines(&log)
            .iter()
            .find(|l| message(l) == "http listening")
            .and_then(|l| l["fields"]["listen"].as_str()?.parse().ok());
        at.is_some()
    });
    let at = at.unwrap();
    let customer_versions = |id: &str| -> Vec<String> {
        let (_, body) = get(at, &format!("/api/customers/{id}"), Some(TOKEN));
        // Not there yet: 404, and no journeys.
        json_of(&body)["journeys"]
            .as_array()
            .map(|js| {
                js.iter()
                    .map(|j| j["version"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };

    // A producer's trace: the event's span continues it, decisions hang under the event.
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let traceparent = format!("00-{trace_id}-{parent}-01");
    let p = producer(&brokers);
    send(
        &p,
        "orders",
        "ann",
        placed("ann", "o1").as_bytes(),
        &[("traceparent", &traceparent)],
    );
    flush(&p);
    wait_until(60, "ann's journey", || customer_versions("ann").len() == 1);
    let v1 = customer_versions("ann")[0].clone();

    // A broken file: refused with its position, and the last good version keeps running.
    std::fs::write(
        seqs.join("broken.yaml"),
        "name: broken\ntrigger: { event: order.placed }\nsteps:\n  - id: a\n    wiat: 1d\n    email: { template: t/a }\n",
    )
    .unwrap();
    wait_until(30, "the broken file refused", || {
        log_lines(&log).iter().any(|l| {
            l["level"] == "ERROR"
                && message(l).ends_with(
                    "broken.yaml:5:5: unknown key `wiat` in a step\n  hint: did you mean `wait`?",
                )
        })
    });
    assert_eq!(
        sample(
            &metrics(at),
            "aftercare_sequence_reloads_total{outcome=\"refused\"}"
        ),
        Some(1.0)
    );
    send(&p, "orders", "bob", placed("bob", "o2").as_bytes(), &[]);
    flush(&p);
    wait_until(60, "bob's journey", || customer_versions("bob").len() == 1);
    assert_eq!(customer_versions("bob"), vec![v1.clone()]);

    // A good change: new journeys start on it, journeys in flight keep theirs.
    std::fs::remove_file(seqs.join("broken.yaml")).unwrap();
    std::fs::write(
        seqs.join("thanks.yaml"),
        THANKS.replace("wait: 1h", "wait: 2h"),
    )
    .unwrap();
    wait_until(30, "the good version reloaded", || {
        sample(
            &metrics(at),
            "aftercare_sequence_reloads_total{outcome=\"applied\"}",
        ) == Some(1.0)
    });
    send(&p, "orders", "cat", placed("cat", "o3").as_bytes(), &[]);
    flush(&p);
    wait_until(60, "cat's journey", || customer_versions("cat").len() == 1);
    let v2 = customer_versions("cat")[0].clone();
    assert_ne!(v2, v1);
    assert_eq!(customer_versions("ann"), vec![v1.clone()]);
    let (_, body) = get(at, "/api/sequences", Some(TOKEN));
    let s = json_of(&body);
    assert_eq!(s["loaded"][0]["version"], v2.as_str());
    let mut in_flight = s["in_flight"].as_array().unwrap().clone();
    in_flight.sort_by_key(|v| v["current"].as_bool());
    assert_eq!(
        in_flight,
        vec![
            json!({"sequence": "thanks", "version": v1, "step": "followup", "status": "due", "count": 2, "current": false}),
            json!({"sequence": "thanks", "version": v2, "step": "followup", "status": "due", "count": 1, "current": true}),
        ]
    );

    // Stopped as by the orchestrator: buffered spans are flushed on the way out.
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert!(child.0.wait().unwrap().success());
    let spans = collector.spans();
    let event = spans
        .iter()
        .find(|s| s.0 == "event" && s.4["event.id"] == "p-o1")
        .unwrap_or_else(|| panic!("no event span for p-o1 in {spans:?}"));
    assert_eq!((&event.1[..], &event.3[..]), (trace_id, parent));
    assert_eq!(event.4["event.type"], "order.placed");
    assert_eq!(event.4["messaging.destination"], "orders");
    assert_eq!(
        event.4["customer"],
        aftercare::service::trace::hashed("ann")
    );
    let decisions: Vec<(String, String)> = spans
        .iter()
        .filter(|s| s.0 == "decision" && s.3 == event.2)
        .map(|s| {
            (
                s.4["kind"].as_str().unwrap().to_string(),
                s.4["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        vec![
            ("enter".to_string(), "trigger order.placed".to_string()),
            ("email".to_string(), "no wait".to_string()),
        ]
    );
    let sends: Vec<&Value> = spans
        .iter()
        .filter(|s| s.0 == "send")
        .map(|s| &s.4)
        .collect();
    assert_eq!(sends.len(), 3, "{spans:?}");
    assert!(
        sends
            .iter()
            .all(|a| a["smtp.code"] == "250" || a["smtp.code"] == 250)
    );
    // One trace from the order event to the relay's acceptance: each receipt's send, from the
    // outbox thread, is a child of the span of the event that queued it (of one of its spans,
    // if a batch was tried again after a failed commit).
    for (customer, event_id) in [("ann", "p-o1"), ("bob", "p-o2"), ("cat", "p-o3")] {
        let events: Vec<(&str, &str)> = spans
            .iter()
            .filter(|s| s.0 == "event" && s.4["event.id"] == event_id)
            .map(|s| (&*s.1, &*s.2))
            .collect();
        let send = spans
            .iter()
            .find(|s| {
                s.0 == "send"
                    && s.4["customer"] == aftercare::service::trace::hashed(customer)
                    && s.4["step"] == "receipt"
            })
            .unwrap_or_else(|| panic!("no send span for {customer}'s receipt in {spans:?}"));
        assert!(
            events.contains(&(&*send.1, &*send.3)),
            "{customer}'s send (trace {}, parent {}) is not a child of an event span of \
             {event_id}: {events:?}",
            send.1,
            send.3
        );
    }
    // Nothing in the logs gives an address away.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("@example.com"), "{text}");
}

/// Debian's Chromium, headless, on `url`, with `extra` flags; returns its stdout.
fn chromium(url: &str, extra: &[&str], profile: &std::path::Path) -> String {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|b| std::path::Path::new(b).exists())
        .expect(
            "Chromium is needed for the dashboard test: apt-get install chromium (.ci/run does)",
        );
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `data-figure="KEY">TEXT<` pairs of a rendered page.
fn page_figures(dom: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut rest = dom;
    while let Some(i) = rest.find("data-figure=\"") {
        rest = &rest[i + 13..];
        let key_end = rest.find('"').unwrap();
        let key = rest[..key_end].to_string();
        let text_start = rest.find('>').unwrap() + 1;
        let text_end = text_start + rest[text_start..].find('<').unwrap();
        out.insert(key, rest[text_start..text_end].to_string());
        rest = &rest[text_end..];
    }
    out
}

#[test]
fn the_dashboard_renders_the_apis_figures_in_chromium() {
    let kafka = cluster();
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seqs = sequences_dir("ops-dash", &[("thanks.yaml", THANKS)]);
    let mut cfg = config(&brokers, "ops-dash", &store.url, &seqs, &seqs.join("mail"));
    cfg.secrets.admin_token = Some(TOKEN.into());
    cfg.http.figures_refresh = "1s".into();
    let service = start(cfg);
    let at = addr(&service);
    let p = producer(&brokers);
    for (c, o) in [("ann", "o1"), ("bob", "o2"), ("cat", "o3"), ("ann", "o4")] {
        send(&p, "orders", c, placed(c, o).as_bytes(), &[]);
    }
    send(&p, "orders", "x", b"[1,2]", &[]);
    nps(&p, &[("ann", 10), ("bob", 7), ("cat", 2)]);
    flush(&p);
    wait_until(60, "figures of the whole stream", || {
        let (_, body) = get(at, "/api/figures", Some(TOKEN));
        let f = json_of(&body);
        f["nps"]["responses"] == 3 && f["sequences"][0]["steps"][0]["sent"] == 4
    });
    let (_, body) = get(at, "/api/figures", Some(TOKEN));
    let f = json_of(&body);
    let pct = |v: &Value| match v.as_f64() {
        Some(r) => format!("{:.1}%", 100.0 * r),
        None => "–".to_string(),
    };
    let n = |v: &Value| v.as_i64().unwrap();
    let mut expected = std::collections::BTreeMap::new();
    let mut put = |k: String, v: String| {
        expected.insert(k, v);
    };
    put(
        "nps.score".into(),
        format!("{:.1}", f["nps"]["score"].as_f64().unwrap()),
    );
    put("customers".into(), f["customers"].to_string());
    put(
        "repeat_purchase_rate".into(),
        pct(&f["repeat_purchase_rate"]),
    );
    put("dead_letters".into(), f["dead_letters"].to_string());
    put("outbox_pending".into(), f["outbox_pending"].to_string());
    for s in f["sequences"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        put(format!("{name}/entered"), s["entered"].to_string());
        put(format!("{name}/goals"), s["goals"].to_string());
        for st in s["steps"].as_array().unwrap() {
            let id = st["id"].as_str().unwrap();
            put(format!("{name}/{id}/emailed"), st["emailed"].to_string());
            put(
                format!("{name}/{id}/sent"),
                (n(&st["sent"]) + n(&st["dry_run"])).to_string(),
            );
            put(format!("{name}/{id}/skipped"), st["skipped"].to_string());
            put(format!("{name}/{id}/deferred"), st["deferred"].to_string());
            put(
                format!("{name}/{id}/failed"),
                (n(&st["failed"]) + n(&st["bounced"])).to_string(),
            );
            put(
                format!("{name}/{id}/in_flight"),
                st["in_flight"].to_string(),
            );
        }
    }
    // The figures the page must show, as the API gives them (and as this stream makes them).
    assert_eq!(expected["nps.score"], "0.0");
    assert_eq!(expected["customers"], "3");
    assert_eq!(expected["repeat_purchase_rate"], "33.3%");
    assert_eq!(expected["thanks/entered"], "4");
    assert_eq!(expected["thanks/followup/in_flight"], "4");

    let profile = seqs.join("chromium-profile");
    let url = format!("http://{at}/dashboard#token={TOKEN}&customer=ann");
    let dom = chromium(&url, &["--dump-dom"], &profile);
    assert!(dom.contains("data-loaded=\"figures\""), "{dom}");
    // The token was taken: no login form.
    assert!(dom.contains("<form id=\"login\" hidden"), "{dom}");
    assert_eq!(page_figures(&dom), expected);
    // The customer lookup: ann's whole timeline.
    let (_, body) = get(at, "/api/customers/ann", Some(TOKEN));
    let timeline = json_of(&body)["timeline"].as_array().unwrap().len();
    assert!(dom.contains("data-customer=\"ann\""), "{dom}");
    assert_eq!(dom.matches("class=\"timeline\"").count(), timeline);
    // A wrong token shows the login form and no figures.
    let dom = chromium(
        &format!("http://{at}/dashboard#token=nope"),
        &["--dump-dom"],
        &profile,
    );
    assert!(dom.contains("The token was refused."), "{dom}");
    assert!(dom.contains("<form id=\"login\">"), "{dom}");
    assert!(page_figures(&dom).values().all(|v| v == "–"), "{dom}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1400",
            "--hide-scrollbars",
        ],
        &profile,
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    service.stop();
}
