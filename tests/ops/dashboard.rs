//! The dashboard in Debian's Chromium, headless, against the API's figures.

use super::*;

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

/// A holdout of half the customers, a split step and a measure whose window closes at once.
const TRIAL: &str = "name: trial\ncategory: education\njourney: per_customer\ntrigger: { event: order.placed }\nexperiment:\n  holdout: 50%\n  salt: dash\n  measure:\n    - { name: again, event: order.placed, within: 1s }\nsteps:\n  - id: tip\n    email: { template: t/a }\n    variants:\n      - { id: a, weight: 1 }\n      - { id: b, weight: 1, email: { template: t/b } }\n";

/// What the experiments panel shows for the API's figures: `data-figure` key and text.
fn experiment_figures(r: &Value, put: &mut impl FnMut(String, String)) {
    let pct = |v: &Value| match v.as_f64() {
        Some(r) => format!("{:.1}%", 100.0 * r),
        None => "–".to_string(),
    };
    let points = |v: &Value| match v.as_f64() {
        Some(d) => format!("{}{:.1}pp", if d >= 0.0 { "+" } else { "" }, 100.0 * d),
        None => "–".to_string(),
    };
    put(
        "return_on_relationship".into(),
        pct(&r["return_on_relationship"]["rate"]),
    );
    for x in r["experiments"].as_array().unwrap() {
        let seq = x["sequence"].as_str().unwrap();
        for m in x["measures"].as_array().unwrap() {
            let key = |f: &str| format!("{seq}/{}/{f}", m["name"].as_str().unwrap());
            for g in ["treated", "held_out"] {
                let text = format!(
                    "{} of {} ({})",
                    m[g]["converted"],
                    m[g]["customers"],
                    pct(&m[g]["rate"])
                );
                put(key(g), text);
            }
            put(key("uplift"), points(&m["uplift"]));
            let interval = match m["interval"].as_array() {
                Some(i) => format!("{} to {}", points(&i[0]), points(&i[1])),
                None => "–".into(),
            };
            put(key("interval"), interval);
            let p = m["p_value"]
                .as_f64()
                .map_or("–".into(), |p| format!("{p:.4}"));
            put(key("p_value"), p);
            let open = match m["open"].as_u64().unwrap() {
                0 => "all windows closed".to_string(),
                n => format!("collecting: {n} windows open"),
            };
            put(key("open"), open);
        }
        for v in x["variants"].as_array().unwrap() {
            let key = format!(
                "{seq}/{}/{}",
                v["step"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            );
            put(format!("{key}/sends"), format!("{} sent", v["sends"]));
            put(
                format!("{key}/goals"),
                format!("{} goal conversions ({})", v["goals"], pct(&v["rate"])),
            );
        }
    }
}

#[test]
fn the_dashboard_renders_the_apis_figures_in_chromium() {
    let kafka = cluster();
    let brokers = kafka.bootstrap_servers();
    let store = TestStore::sqlite();
    let seqs = sequences_dir(
        "ops-dash",
        &[("thanks.yaml", THANKS), ("trial.yaml", TRIAL)],
    );
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
    wait_until(
        60,
        "figures of the whole stream, the experiment's windows closed",
        || {
            let (_, body) = get(at, "/api/figures", Some(TOKEN));
            let f = json_of(&body);
            let trial = &f["experiments"]["experiments"][0]["measures"][0];
            f["nps"]["responses"] == 3
                && f["sequences"][0]["steps"][0]["sent"] == 4
                && trial["open"] == 0
                && trial["treated"]["customers"].as_u64().unwrap()
                    + trial["held_out"]["customers"].as_u64().unwrap()
                    == 3
        },
    );
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
    experiment_figures(&f["experiments"], &mut put);
    // `/metrics` carries the same figures, from the same report.
    let (_, metrics) = get(at, "/metrics", None);
    let treated = &f["experiments"]["experiments"][0]["measures"][0]["treated"]["customers"];
    let gauge = format!(
        "aftercare_experiment{{sequence=\"trial\",measure=\"again\",group=\"treated\",figure=\"customers\"}} {}",
        treated.as_f64().unwrap()
    );
    assert!(metrics.contains(&gauge), "{gauge} not in\n{metrics}");
    // The figures the page must show, as the API gives them (and as this stream makes them).
    assert_eq!(expected["nps.score"], "0.0");
    assert_eq!(expected["customers"], "3");
    assert_eq!(expected["repeat_purchase_rate"], "33.3%");
    assert_eq!(expected["thanks/entered"], "4");
    assert_eq!(expected["thanks/followup/in_flight"], "4");
    assert_eq!(expected["trial/again/open"], "all windows closed");
    let variant_keys = expected
        .keys()
        .filter(|k| k.starts_with("trial/tip/a/") || k.starts_with("trial/tip/b/"));
    assert_eq!(variant_keys.count(), 4);

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
