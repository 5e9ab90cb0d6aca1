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
