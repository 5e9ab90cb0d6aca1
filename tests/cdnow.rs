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
