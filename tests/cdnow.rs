//! The whole CDNOW data set (69,659 real purchases) through the starter sequences, checked
//! against totals counted independently from the event stream itself.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aftercare::engine::{Engine, Policy};
use aftercare::sequence::Catalog;
use aftercare::simulate::{Simulator, replay};
use chrono::{DateTime, Duration};
use serde_json::Value;

#[test]
fn cdnow_runs_the_starter_set_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("data/cdnow/CDNOW_master.txt")).unwrap();
    let rows = aftercare::cdnow::parse(&text).unwrap();
    assert_eq!(rows.len(), 69_659);
    let lines = aftercare::cdnow::events(&rows);
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // Totals straight from the stream.
    let mut count: HashMap<String, usize> = HashMap::new();
    let mut placed_at = HashMap::new();
    let mut camera_orders = std::collections::HashSet::new();
    let (mut late, mut camera_delivered, mut other_delivered) = (0, 0, 0);
    for e in &events {
        let kind = e["type"].as_str().unwrap();
        *count.entry(kind.to_string()).or_default() += 1;
        let order = e["data"]["order_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let time = DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap();
        match kind {
            "order.placed" => {
                if e["data"]["items"][0]["category"] == "camera" {
                    camera_orders.insert(order.clone());
                }
                placed_at.insert(order, time);
            }
            "order.shipped" if time - placed_at[&order] > Duration::days(3) => late += 1,
            "order.delivered" if camera_orders.contains(&order) => camera_delivered += 1,
            "order.delivered" => other_delivered += 1,
            _ => {}
        }
    }
    assert_eq!(count["order.placed"], 69_659);
    // Birthdays and attributes, for date triggers: 85% of customers have one, 29 February
    // among them; every customer a tier.
    let mut birthdays: HashMap<&str, Option<&str>> = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == "order.placed") {
        let c = &e["data"]["customer"];
        assert!(c["attributes"]["tier"].is_string(), "{c}");
        birthdays.insert(e["subject"].as_str().unwrap(), c["birthday"].as_str());
    }
    let known = birthdays.values().flatten().count();
    let share = known as f64 / birthdays.len() as f64;
    assert!((0.83..0.87).contains(&share), "{share}");
    assert!(birthdays.values().flatten().any(|b| b.ends_with("-02-29")));
    assert!(
        late > 1000 && camera_delivered > 10_000,
        "derivations look wrong: {late} {camera_delivered}"
    );

    // The same stream through simulate.
    let jsonl = lines.join("\n").into_bytes();
    let (catalog, diags) = Catalog::load(&root.join("sequences")).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    let mut sim = Simulator::new(Engine::new(Arc::new(catalog), Policy::default()));
    let mut out = Vec::new();
    let summary = replay(
        &mut sim,
        &jsonl[..],
        &mut out,
        "90d".parse().unwrap(),
        |n, e| panic!("line {n}: {e}"),
    )
    .unwrap();
    assert_eq!(summary.stats.events as usize, events.len());
    assert_eq!(summary.stats.duplicates, 0);

    let mut lines: HashMap<(String, String, String), usize> = HashMap::new();
    let mut last = String::new();
    for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).unwrap();
        let at = v["at"].as_str().unwrap().to_string();
        assert!(at >= last, "lines out of time order: {at} after {last}");
        last = at;
        if v["action"] == "email" {
            assert!(
                v["subject"].as_str().is_some_and(|s| !s.is_empty()),
                "email without subject: {v}"
            );
        }
        let key = (
            v["sequence"].as_str().unwrap().to_string(),
            v["step"].as_str().unwrap_or("-").to_string(),
            v["action"].as_str().unwrap().to_string(),
        );
        *lines.entry(key).or_default() += 1;
    }
    let n = |seq: &str, step: &str, action: &str| {
        lines
            .get(&(seq.into(), step.into(), action.into()))
            .copied()
            .unwrap_or(0)
    };

    // Transactional fulfilment: one confirmation per order, nothing suppressed.
    assert_eq!(
        n("fulfilment", "confirmation", "email"),
        count["order.placed"]
    );
    assert_eq!(n("fulfilment", "delay-notice", "email"), late);
    assert_eq!(
        n("fulfilment", "shipped", "email") + n("fulfilment", "shipped-late", "email"),
        count["order.shipped"]
    );
    assert_eq!(n("fulfilment", "shipped-late", "email"), late);
    assert_eq!(
        n("fulfilment", "delivered", "email") + n("fulfilment", "delivered-late", "email"),
        count["order.delivered"]
    );
    assert_eq!(
        n("fulfilment", "confirmation", "exit") + n("fulfilment", "shipped", "exit"),
        count["order.cancelled"]
    );
    assert!(
        !lines
            .keys()
            .any(|(s, _, a)| s == "fulfilment" && a == "suppress")
    );

    // Education for camera deliveries; reviews for the rest directly, for cameras after it.
    assert_eq!(n("camera-education", "basics", "enter"), camera_delivered);
    assert_eq!(
        n("review-request", "ask", "enter"),
        other_delivered + n("camera-education", "hand-over", "start")
    );
    // One survey per resolved ticket, except a second ticket resolved while a survey is pending.
    let surveys = n("nps-survey", "survey", "enter");
    assert!(
        surveys <= count["support.ticket_resolved"]
            && surveys * 100 >= count["support.ticket_resolved"] * 95
    );
    assert_eq!(
        n("fulfilment", "done", "exit"),
        count["order.delivered"] - late
    );
}

/// SPEC §8 on the whole CDNOW stream: `simulate --report` gives camera-education's groups,
/// rates, uplift, interval and p-value, and each variant's sends and goals — equal to a count
/// made here from the decision lines and the events alone, with the statistics computed here
/// too (not by the code under test).
#[test]
fn the_experiment_report_equals_a_count_from_the_decision_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("data/cdnow/CDNOW_master.txt")).unwrap();
    let lines = aftercare::cdnow::events(&aftercare::cdnow::parse(&text).unwrap());
    let dir = std::env::temp_dir().join(format!("aftercare-cdnow-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let events_file = dir.join("cdnow.jsonl");
    std::fs::write(&events_file, lines.join("\n")).unwrap();
    let report_file = dir.join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .current_dir(root)
        .arg("simulate")
        .arg("--events")
        .arg(&events_file)
        .arg("--report")
        .arg(&report_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    let x = &report["experiments"][0];
    assert_eq!(x["sequence"], "camera-education");
    let decisions: Vec<Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected = independent::count(&decisions, &events);

    for (m, (name, converted)) in x["measures"].as_array().unwrap().iter().zip([
        ("repeat_purchase", &expected.repeat),
        ("review", &expected.review),
    ]) {
        assert_eq!(m["name"], name);
        assert_eq!(m["open"], 0, "the clock ends 90 days after the last event");
        let (t, h) = (converted[0], converted[1]);
        for (group, (k, n)) in [("treated", t), ("held_out", h)] {
            assert_eq!(m[group]["customers"], n, "{name} {group}");
            assert_eq!(m[group]["converted"], k, "{name} {group}");
        }
        let (d, low, high) = independent::newcombe(t, h);
        assert_close(&m["uplift"], d, name);
        assert_close(&m["interval"][0], low, name);
        assert_close(&m["interval"][1], high, name);
        assert_close(&m["p_value"], independent::p_value(t, h), name);
    }
    let variants = x["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    for v in variants {
        let id = v["id"].as_str().unwrap();
        let (goals, sends) = expected.variants[id];
        assert!(sends > 1000, "{id}: {sends} sends");
        assert_eq!(
            (v["sends"].as_u64().unwrap(), v["goals"].as_u64().unwrap()),
            (sends, goals),
            "{id}"
        );
    }
    let ror = &report["return_on_relationship"];
    assert_eq!(
        (
            ror["helped"].as_u64().unwrap(),
            ror["returned"].as_u64().unwrap()
        ),
        expected.relationship
    );
    assert!(
        expected.relationship.0 > 1000,
        "{:?}",
        expected.relationship
    );
    // The summary a marketer reads names the same figures.
    let summary = String::from_utf8_lossy(&out.stderr);
    let (k, n) = expected.repeat[0];
    assert!(
        summary.contains(&format!(
            "repeat_purchase (order.placed within 90d): treated {k} of {n}"
        )),
        "{summary}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn assert_close(got: &Value, want: f64, what: &str) {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got}"));
    assert!((got - want).abs() < 1e-9, "{what}: {got} against {want}");
}

/// The figures counted from the JSON lines, by SPEC §8's rules, without aftercare's code.
mod independent {
    use std::collections::HashMap;

    use chrono::{DateTime, Duration, FixedOffset};
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    pub struct Expected {
        /// (converted, customers) of the treated and the held-out group.
        pub repeat: [(u64, u64); 2],
        pub review: [(u64, u64); 2],
        /// Per variant: (goals, sends).
        pub variants: HashMap<String, (u64, u64)>,
        /// (helped, returned).
        pub relationship: (u64, u64),
    }

    type Time = DateTime<FixedOffset>;

    fn time(v: &Value) -> Time {
        DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap()
    }

    fn held_out(customer: &str) -> bool {
        let digest = Sha256::digest(format!("2026q4:camera-education:{customer}").as_bytes());
        let first = u64::from_be_bytes(digest[..8].try_into().unwrap());
        first % 10_000 < 1_000
    }

    pub fn count(decisions: &[Value], events: &[Value]) -> Expected {
        let camera = |d: &&Value| d["sequence"] == "camera-education";
        // First entry per customer; its line names the group, which is SPEC §8's bucket.
        let mut entered: HashMap<String, Time> = HashMap::new();
        for d in decisions
            .iter()
            .filter(camera)
            .filter(|d| d["action"] == "enter")
        {
            let c = d["customer"].as_str().unwrap();
            let reason = d["reason"].as_str().unwrap();
            assert_eq!(
                reason.contains("; held out: bucket "),
                held_out(c),
                "{reason}"
            );
            assert!(reason.contains("held out: bucket ") || reason.contains("; treated: bucket "));
            entered
                .entry(c.to_string())
                .or_insert_with(|| time(&d["at"]));
        }
        let mut orders: HashMap<&str, Vec<Time>> = HashMap::new();
        let mut good_reviews: HashMap<&str, Vec<Time>> = HashMap::new();
        let mut last = None;
        for e in events {
            let t = time(&e["time"]);
            last = last.max(Some(t));
            let who = e["subject"].as_str().unwrap();
            match e["type"].as_str().unwrap() {
                "order.placed" => orders.entry(who).or_default().push(t),
                "review.submitted" if e["data"]["rating"].as_u64().unwrap() >= 4 => {
                    good_reviews.entry(who).or_default().push(t)
                }
                _ => {}
            }
        }
        let end = last.unwrap() + Duration::days(90);
        let tally = |of: &HashMap<&str, Vec<Time>>, within: i64| {
            let mut groups = [(0, 0); 2];
            for (c, at) in &entered {
                let until = *at + Duration::days(within);
                assert!(until <= end);
                let g = &mut groups[usize::from(held_out(c))];
                g.1 += 1;
                let met = of
                    .get(c.as_str())
                    .is_some_and(|ts| ts.iter().any(|t| t > at && *t <= until));
                g.0 += u64::from(met);
            }
            groups
        };
        Expected {
            repeat: tally(&orders, 90),
            review: tally(&good_reviews, 30),
            variants: variants(decisions),
            relationship: relationship(decisions, events, end),
        }
    }

    /// Per variant of the tripod step: customers sent it (their first tripod email), and of
    /// them those with a goal line for the step.
    fn variants(decisions: &[Value]) -> HashMap<String, (u64, u64)> {
        let tripod = |d: &&Value| d["sequence"] == "camera-education" && d["step"] == "tripod";
        let mut sent: HashMap<&str, String> = HashMap::new();
        let mut goal: std::collections::HashSet<&str> = Default::default();
        for d in decisions.iter().filter(tripod) {
            let c = d["customer"].as_str().unwrap();
            match d["action"].as_str().unwrap() {
                "email" => {
                    let reason = d["reason"].as_str().unwrap();
                    let variant = reason.rsplit_once("; variant ").unwrap().1.to_string();
                    sent.entry(c).or_insert(variant);
                }
                "goal" => {
                    goal.insert(c);
                }
                _ => {}
            }
        }
        let mut out: HashMap<String, (u64, u64)> = HashMap::new();
        for (c, v) in sent {
            let e = out.entry(v).or_default();
            e.1 += 1;
            e.0 += u64::from(goal.contains(c));
        }
        out
    }

    /// Helped (a ticket resolved, camera-education completed; a new spell only a year after
    /// the last one began) within the 12 months before `end`, and of them those who ordered
    /// after, or whom another customer's order names in `referred_by` after (none in CDNOW).
    fn relationship(decisions: &[Value], events: &[Value], end: Time) -> (u64, u64) {
        // (time, customer, true for help / false for an order), in time order.
        let mut moments: Vec<(Time, &str, bool)> = Vec::new();
        for e in events {
            let kind = e["type"].as_str().unwrap();
            if kind == "support.ticket_resolved" || kind == "order.placed" {
                moments.push((
                    time(&e["time"]),
                    e["subject"].as_str().unwrap(),
                    kind != "order.placed",
                ));
            }
        }
        for d in decisions {
            let c = d["customer"].as_str().unwrap();
            // A held-out customer was sent no education: their completion is no help.
            if d["sequence"] == "camera-education" && d["action"] == "complete" && !held_out(c) {
                moments.push((time(&d["at"]), c, true));
            }
        }
        moments.sort_by_key(|m| m.0);
        // (first help of the spell, latest help, ordered since the first).
        let mut spell: HashMap<&str, (Time, Time, bool)> = HashMap::new();
        for (t, c, help) in moments {
            match (help, spell.get_mut(c)) {
                (true, Some(s)) if s.0 + Duration::days(365) >= t => s.1 = t,
                (true, _) => {
                    spell.insert(c, (t, t, false));
                }
                (false, Some(s)) if s.0 < t => s.2 = true,
                (false, _) => {}
            }
        }
        let counted = spell
            .values()
            .filter(|(_, last, _)| *last + Duration::days(365) >= end);
        counted.fold((0, 0), |(n, k), (_, _, returned)| {
            (n + 1, k + u64::from(*returned))
        })
    }

    /// Wilson's score interval at z for the 95% level.
    fn wilson(k: u64, n: u64) -> (f64, f64) {
        let z = 1.959_963_984_540_054_f64;
        let (p, n) = (k as f64 / n as f64, n as f64);
        let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
        let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
        (centre - half, centre + half)
    }

    /// Treated minus held-out, with Newcombe's hybrid score interval (1998, method 10).
    pub fn newcombe(t: (u64, u64), h: (u64, u64)) -> (f64, f64, f64) {
        let (p1, p2) = (t.0 as f64 / t.1 as f64, h.0 as f64 / h.1 as f64);
        let ((l1, u1), (l2, u2)) = (wilson(t.0, t.1), wilson(h.0, h.1));
        let d = p1 - p2;
        let low = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
        let high = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
        (d, low, high)
    }

    /// The pooled two-proportion z-test, two-sided: 2·(1 − Φ(|z|)), Φ by erf's series.
    pub fn p_value(t: (u64, u64), h: (u64, u64)) -> f64 {
        let (p1, p2) = (t.0 as f64 / t.1 as f64, h.0 as f64 / h.1 as f64);
        let pooled = (t.0 + h.0) as f64 / (t.1 + h.1) as f64;
        let se = (pooled * (1.0 - pooled) * (1.0 / t.1 as f64 + 1.0 / h.1 as f64)).sqrt();
        let x = ((p1 - p2) / se).abs() / std::f64::consts::SQRT_2;
        1.0 - erf(x)
    }

    /// erf by its Taylor series (converges for the |x| < 6 a p-value needs, to 1e-15).
    fn erf(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
