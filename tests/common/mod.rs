//! One test environment for every engine test: sequences from YAML strings, a manual
//! (virtual) clock, the memory store, and helpers to send events and move time.
#![allow(dead_code)]

pub mod http;
pub mod service;
pub mod smtp;
pub mod stores;
pub mod tansu;
pub mod webhooks;

use std::sync::Arc;

use aftercare::engine::{Decision, Engine, Policy};
use aftercare::event::Event;
use aftercare::sequence::{Catalog, Diagnostic};
use aftercare::simulate::Simulator;
use aftercare::template::Templates;
use aftercare::time::{Period, rfc3339};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Monday 2024-01-01 00:00 UTC: every relative time counts from here.
pub const T0: &str = "2024-01-01T00:00:00Z";

/// Templates every test may use: `t/a` … `t/e`, subjects naming the customer.
pub fn default_templates() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for n in ["a", "b", "c", "d", "e"] {
        files.push((
            format!("t/{n}.subject.j2"),
            format!("{} for {{{{ customer.name }}}}", n.to_uppercase()),
        ));
        files.push((format!("t/{n}.html.j2"), format!("<p>{n}</p>")));
    }
    files.push((
        "t/coupon.subject.j2".into(),
        "Your code: {{ coupon.code }}".into(),
    ));
    files.push(("t/coupon.html.j2".into(), "<p>{{ coupon.code }}</p>".into()));
    files.push((
        "t/hook.json.j2".into(),
        r#"{"customer": {{ customer.id }}, "name": {{ customer.name }}}"#.into(),
    ));
    files
}

pub fn time(at: &str) -> DateTime<Utc> {
    let t0 = DateTime::parse_from_rfc3339(T0)
        .unwrap()
        .with_timezone(&Utc);
    match at.strip_prefix('+') {
        Some(p) => t0 + p.parse::<Period>().unwrap().0,
        None => DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&Utc),
    }
}

/// Compiles sequences; panics with every diagnostic if they are invalid.
pub fn catalog(files: &[(&str, &str)], templates: Vec<(String, String)>) -> Catalog {
    let (templates, tdiags) = Templates::from_files("templates", templates);
    let sources = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    let (catalog, diags) = Catalog::from_sources(sources, templates, tdiags);
    assert!(
        diags.is_empty(),
        "invalid test sequences:\n{}",
        render(&diags)
    );
    catalog
}

/// Diagnostics for sources expected to be invalid.
pub fn diagnostics(files: &[(&str, &str)], templates: Vec<(String, String)>) -> Vec<String> {
    let (templates, tdiags) = Templates::from_files("templates", templates);
    let sources = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    Catalog::from_sources(sources, templates, tdiags)
        .1
        .iter()
        .map(|d| d.to_string())
        .collect()
}

fn render(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct TestEnv {
    pub sim: Simulator,
    out: Vec<Decision>,
    next_id: u64,
}

impl TestEnv {
    /// One or more sequences (`name.yaml` contents), default templates and policy.
    pub fn new(sequences: &[&str]) -> TestEnv {
        TestEnv::with(sequences, Policy::default())
    }

    pub fn with(sequences: &[&str], policy: Policy) -> TestEnv {
        let files: Vec<(String, &str)> = sequences
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("s{i}.yaml"), *s))
            .collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        let catalog = catalog(&files, default_templates());
        TestEnv::from_catalog(catalog, policy)
    }

    pub fn from_catalog(catalog: Catalog, policy: Policy) -> TestEnv {
        TestEnv {
            sim: Simulator::new(Engine::new(Arc::new(catalog), policy)),
            out: Vec::new(),
            next_id: 0,
        }
    }

    /// Swaps in new sequence files (a deploy); journeys in flight keep their version.
    pub fn deploy(&mut self, sequences: &[&str]) {
        let files: Vec<(String, &str)> = sequences
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("s{i}.yaml"), *s))
            .collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        let policy = self.sim.engine().policy.clone();
        let catalog = catalog(&files, default_templates());
        let old = std::mem::replace(
            &mut self.sim,
            Simulator::new(Engine::new(Arc::new(catalog), policy)),
        );
        self.sim.adopt(old);
    }

    /// Sends an event of `kind` for `customer` at `at` (`+1d` from T0, or RFC 3339).
    /// The customer gets an email address (`<id>@example.com`) unless `data.customer` says otherwise.
    pub fn event(&mut self, kind: &str, customer: &str, at: &str, mut data: Value) {
        if data.get("customer").is_none() {
            data["customer"] =
                json!({ "email": format!("{customer}@example.com"), "name": customer });
        }
        self.next_id += 1;
        let id = format!("ev-{}", self.next_id);
        self.send(json!({
            "specversion": "1.0", "id": id, "source": "/test", "type": kind,
            "time": rfc3339(time(at)), "subject": customer, "data": data,
        }));
    }

    /// Sends a raw CloudEvent (structured JSON).
    pub fn send(&mut self, ev: Value) {
        let ev = Event::from_structured(ev.to_string().as_bytes()).expect("valid test event");
        self.sim.push_event(ev, &mut self.out);
    }

    /// An `order.placed` with one item of `category`.
    pub fn placed(&mut self, customer: &str, order: &str, at: &str, category: &str) {
        self.event("order.placed", customer, at, json!({
            "order_id": order, "total": "10.00", "currency": "USD",
            "items": [{"sku": format!("{category}-1"), "name": category, "category": category, "quantity": 1, "unit_price": "10.00"}],
        }));
    }

    /// Runs every wake-up up to `at`.
    pub fn advance(&mut self, at: &str) {
        self.sim.advance_to(time(at), &mut self.out);
    }

    /// Marks the customer's address as bounced (what a 5xx from SMTP does).
    pub fn bounce(&mut self, customer: &str) {
        self.sim.bounce(customer);
    }

    /// Decisions since the last call, as `at sequence/step action (reason)` strings, after
    /// running what is due at the current instant (once its events are all in).
    pub fn take(&mut self) -> Vec<String> {
        self.take_decisions().iter().map(compact).collect()
    }

    /// As [`take`](Self::take), whole decisions.
    pub fn take_decisions(&mut self) -> Vec<Decision> {
        if let Some(now) = self.sim.now() {
            self.sim.advance_to(now, &mut self.out);
        }
        std::mem::take(&mut self.out)
    }
}

/// `2024-01-02T00:00:00Z s/step email (reason)`; `-` for a null step; subject in [] for emails.
pub fn compact(d: &Decision) -> String {
    let mut s = format!(
        "{} {} {}/{} {} ({})",
        rfc3339(d.at),
        d.customer,
        d.sequence,
        d.step.as_deref().unwrap_or("-"),
        d.action,
        d.reason
    );
    if let Some(subject) = &d.subject {
        s.push_str(&format!(" [{subject}]"));
    }
    s
}

/// SplitMix64: a small, well-mixed generator for seeded checks; a fault schedule or a
/// permutation comes from the seed alone, so a failing seed re-runs identically.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A new, empty directory for one test's files: its name says which test binary and test
/// made it, and no two calls share one.
pub fn scratch(name: &str) -> std::path::PathBuf {
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "aftercare-{}-{name}-{}-{n}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One message of every class of malformed input (key, value, the dead letter's reason),
/// made from `good`, a valid `order.placed` event: what every path that reads events must
/// dead-letter, each with its reason.
pub fn malformed(good: &str) -> Vec<(&'static str, Vec<u8>, String)> {
    let good: Value = serde_json::from_str(good).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v.to_string().into_bytes()
    };
    vec![
        (
            "not-utf8",
            b"\xff\xfe{}".to_vec(),
            "not valid UTF-8 (invalid byte at offset 0)".into(),
        ),
        (
            "not-json",
            b"{not json".to_vec(),
            "not valid JSON: key must be a string at line 1 column 2".into(),
        ),
        ("not-object", b"[1,2]".to_vec(), "not a JSON object".into()),
        (
            "empty",
            Vec::new(),
            "not valid JSON: the message is empty".into(),
        ),
        (
            "no-subject",
            with(&|v| {
                v.as_object_mut().unwrap().remove("subject");
            }),
            "missing required attribute `subject`".into(),
        ),
        (
            "bad-version",
            with(&|v| v["specversion"] = json!("0.3")),
            "unsupported specversion `0.3` (expected \"1.0\")".into(),
        ),
        (
            "wrong-type",
            with(&|v| v["data"]["total"] = json!("ten")),
            "`data.total` must be a number or a decimal string like \"10.00\"".into(),
        ),
        (
            "missing-field",
            with(&|v| {
                v["data"].as_object_mut().unwrap().remove("order_id");
            }),
            "missing required field `data.order_id` for order.placed".into(),
        ),
        (
            "bad-time",
            with(&|v| v["time"] = json!("tuesday")),
            "attribute `time` is not an RFC 3339 timestamp: `tuesday`".into(),
        ),
    ]
}
