//! `aftercare run` as a process: JSON logs, traces exported over OTLP from the producer's
//! trace to the relay's acceptance, hot reload.

use super::*;

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
