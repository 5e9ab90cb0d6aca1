//! The `aftercare` binary: preview, schema, and the starter set as shipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn aftercare(args: &[&str], dir: &Path) -> Output {
    aftercare_env(args, dir, &[])
}

fn aftercare_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// A scratch directory with sequence files and templates.
fn scratch(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aftercare-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

const SHIPPED_EVENT: &str = r#"{"specversion":"1.0","id":"e1","source":"/wh","type":"order.shipped",
  "time":"2024-03-05T09:00:00Z","subject":"c1",
  "data":{"order_id":"o-1","carrier":"CJ","tracking_number":"T1","tracking_url":"https://t.example/T1",
          "customer":{"name":"<Kim & Lee>","locale":"ko-KR","email":"k@example.com"}}}"#;

#[test]
fn preview_renders_locale_fallback_escaping_and_derived_text() {
    let dir = scratch(
        "preview",
        &[
            (
                "seq/s.yaml",
                "name: s\ntrigger: { event: order.placed }\njourney: per_order\nsteps:\n  - id: shipped\n    email: { template: t/shipped }\n",
            ),
            (
                "seq/templates/t/shipped.subject.j2",
                "Shipped: {{ order.id }}",
            ),
            (
                "seq/templates/t/shipped.ko.subject.j2",
                "발송: {{ order.id }}",
            ),
            (
                "seq/templates/t/shipped.html.j2",
                "<p>Hi {{ customer.name }}</p>",
            ),
            (
                "seq/templates/t/shipped.ko.html.j2",
                "<p>{{ customer.name }}님, <a href=\"{{ order.tracking_url }}\">배송 조회</a></p>",
            ),
            ("event.json", SHIPPED_EVENT),
        ],
    );
    let out = stdout(&aftercare(
        &[
            "preview",
            "s",
            "shipped",
            "--event",
            "event.json",
            "--sequences",
            "seq",
            "--format",
            "json",
        ],
        &dir,
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["subject"], "발송: o-1");
    assert_eq!(v["locale"], "ko-KR");
    assert_eq!(
        v["html"],
        "<p>&lt;Kim &amp; Lee&gt;님, <a href=\"https://t.example/T1\">배송 조회</a></p>"
    );
    assert_eq!(
        v["text"],
        "<Kim & Lee>님, 배송 조회 (https://t.example/T1)\n"
    );
    // Without the Korean variant for a locale, the default is used.
    let out = stdout(&aftercare(
        &[
            "preview",
            "s",
            "shipped",
            "--event",
            "event.json",
            "--sequences",
            "seq",
            "--locale",
            "fr-FR",
            "--format",
            "json",
        ],
        &dir,
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["subject"], "Shipped: o-1");
    assert_eq!(v["html"], "<p>Hi &lt;Kim &amp; Lee&gt;</p>");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A webhook step previews as the post: the endpoint (its URL when the config has it), the
/// `webhook-id`, and the body rendered in the customer's locale.
#[test]
fn preview_renders_a_webhook_body_as_json() {
    let dir = scratch(
        "preview-hook",
        &[
            (
                "seq/s.yaml",
                "name: s\ncategory: transactional\ntrigger: { event: order.shipped }\njourney: per_order\nsteps:\n  - id: sms\n    webhook: { endpoint: sms, body: sms/shipped }\n",
            ),
            (
                "seq/templates/sms/shipped.json.j2",
                r#"{"text": {{ "Shipped: " ~ order.id }}, "name": {{ customer.name }}}"#,
            ),
            (
                "seq/templates/sms/shipped.ko.json.j2",
                r#"{"text": {{ "발송: " ~ order.id }}, "name": {{ customer.name }}, "big": 123456789012345678901234567890}"#,
            ),
            (
                "aftercare.toml",
                "[webhooks.sms]\nurl = \"https://sms.example.com/send\"\n",
            ),
            ("event.json", SHIPPED_EVENT),
        ],
    );
    let o = aftercare_env(
        &[
            "preview",
            "s",
            "sms",
            "--event",
            "event.json",
            "--sequences",
            "seq",
            "-c",
            "aftercare.toml",
            "--format",
            "json",
        ],
        &dir,
        &[(
            "AFTERCARE_WEBHOOK_SECRET_SMS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["endpoint"], "sms");
    assert_eq!(v["url"], "https://sms.example.com/send");
    assert_eq!(v["locale"], "ko-KR");
    assert_eq!(
        v["body"],
        serde_json::json!({"text": "발송: o-1", "name": "<Kim & Lee>", "big": 1.2345678901234568e29})
    );
    // As posted: the body's own text, its number not rounded.
    let text = stdout(&o);
    assert!(
        text.contains(r#""big": 123456789012345678901234567890}"#),
        "{text}"
    );
    assert!(v["webhook_id"].as_str().unwrap().ends_with(":sms"), "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn preview_explains_unknown_sequences_and_steps() {
    let o = aftercare(
        &["preview", "fulfilmnet", "shipped", "--event", "x.json"],
        &root(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: no sequence `fulfilmnet`; did you mean `fulfilment`?\n"
    );
    let o = aftercare(
        &["preview", "fulfilment", "nope", "--event", "x.json"],
        &root(),
    );
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("has no step `nope`; its steps are: confirmation, shipped, delivered")
    );
}

/// Every email of the starter set renders, in English and in Korean, for a realistic event.
#[test]
fn every_starter_email_renders_in_both_languages() {
    let dir = scratch("starter", &[]);
    let (catalog, diags) = aftercare::sequence::Catalog::load(&root().join("sequences")).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    let mut rendered = 0;
    for seq in catalog.sequences() {
        for step in &seq.steps {
            if !matches!(step.action, Some(aftercare::sequence::Action::Email { .. })) {
                continue;
            }
            for (locale, marker) in [
                ("en-US", "<html lang=\"en\" "),
                ("ko-KR", "<html lang=\"ko\" "),
            ] {
                let event = SHIPPED_EVENT.replace("ko-KR", locale);
                std::fs::write(dir.join("event.json"), event).unwrap();
                let event_path = dir.join("event.json").display().to_string();
                let args = [
                    "preview",
                    &seq.name,
                    &step.id,
                    "--event",
                    &event_path,
                    "--format",
                    "json",
                ];
                let v: serde_json::Value =
                    serde_json::from_str(&stdout(&aftercare(&args, &root()))).unwrap();
                let (subject, html, text) = (
                    v["subject"].as_str().unwrap(),
                    v["html"].as_str().unwrap(),
                    v["text"].as_str().unwrap(),
                );
                assert!(
                    !subject.is_empty() && !subject.contains('\n'),
                    "{}/{} {locale}: {subject:?}",
                    seq.name,
                    step.id
                );
                assert!(
                    html.contains(marker),
                    "{}/{} {locale}: no {marker}",
                    seq.name,
                    step.id
                );
                // The starter set's layout is MJML, rendered to responsive HTML.
                assert!(
                    html.starts_with("<!doctype html>") && html.contains("@media only screen"),
                    "{}/{} {locale}: not rendered from MJML",
                    seq.name,
                    step.id
                );
                assert!(
                    html.contains("&lt;Kim &amp; Lee&gt;"),
                    "{}/{} {locale}: name not escaped",
                    seq.name,
                    step.id
                );
                assert!(
                    !text.contains('<') || text.contains("<Kim & Lee>"),
                    "{}/{} {locale}: markup in text",
                    seq.name,
                    step.id
                );
                rendered += 1;
            }
        }
    }
    assert_eq!(rendered, 2 * 13);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_checked_in_schema_is_what_aftercare_schema_prints() {
    let printed = stdout(&aftercare(&["schema"], &root()));
    let file = std::fs::read_to_string(root().join("docs/sequence.schema.json")).unwrap();
    assert_eq!(
        printed, file,
        "run `aftercare schema > docs/sequence.schema.json`"
    );
    for entry in std::fs::read_dir(root().join("sequences")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("# yaml-language-server: $schema=../docs/sequence.schema.json\n"),
                "{} lacks the schema line",
                path.display()
            );
        }
    }
}

#[test]
fn the_starter_set_validates() {
    let out = stdout(&aftercare(&["validate", "sequences"], &root()));
    assert_eq!(out, "sequences: 4 sequence(s) valid\n");
}

#[test]
fn cdnow_converter_writes_a_deterministic_stream() {
    let dir = scratch("cdnow", &[]);
    let a = dir.join("a.jsonl");
    let b = dir.join("b.jsonl");
    for out in [&a, &b] {
        let o = aftercare(
            &[
                "cdnow",
                "data/cdnow/CDNOW_master.txt",
                "--limit",
                "500",
                "-o",
                out.to_str().unwrap(),
            ],
            &root(),
        );
        assert!(o.status.success());
    }
    let text = std::fs::read_to_string(&a).unwrap();
    assert_eq!(text, std::fs::read_to_string(&b).unwrap());
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "order.placed");
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["time"].as_str() <= w[1]["time"].as_str()),
        "not in time order"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "order.placed")
            .count(),
        500
    );
    assert!(
        events
            .iter()
            .all(|e| aftercare::event::Event::from_structured(e.to_string().as_bytes()).is_ok())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

const FLOW_A: &str = "name: flow\ncategory: transactional\njourney: per_order\ntrigger: { event: order.placed }\nsteps:\n  - id: later\n    wait: 1h\n    email: { template: t/a }\n";

/// A store with one journey waiting on `flow` as loaded from `seqs`, and a config naming it.
fn store_with_a_waiting_journey(dir: &Path, seqs: &Path) -> (PathBuf, String) {
    use aftercare::engine::{Engine, Policy};
    use aftercare::service::apply::Applier;
    let (catalog, diags) = aftercare::sequence::Catalog::load(seqs).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    let version = catalog.get("flow").unwrap().version.to_string();
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let mut store = aftercare::store::open(&url).unwrap();
    store
        .save_versions(&aftercare::service::versions_of(&catalog))
        .unwrap();
    let event = r#"{"specversion":"1.0","id":"p1","source":"/shop","type":"order.placed",
      "time":"2024-03-05T09:00:00Z","subject":"c1","data":{"order_id":"o1","total":"5","currency":"EUR",
      "items":[],"customer":{"email":"c1@example.com"}}}"#;
    let event =
        std::sync::Arc::new(aftercare::event::Event::from_structured(event.as_bytes()).unwrap());
    let at = chrono::DateTime::parse_from_rfc3339("2024-03-05T09:00:00Z")
        .unwrap()
        .to_utc();
    Applier::new(Engine::new(std::sync::Arc::new(catalog), Policy::default()))
        .apply(&mut *store, &[event], at)
        .unwrap();
    let config = dir.join("aftercare.toml");
    std::fs::write(&config, format!("[store]\nurl = \"{url}\"\n")).unwrap();
    (config, version)
}

/// A version is its file and the templates it renders: editing a template is a new version,
/// and `plan` says which files changed; a template renamed away from journeys in flight is a
/// warning from `validate`, which names the version that still sends it.
#[test]
fn plan_and_validate_show_what_template_edits_do_to_journeys_in_flight() {
    let renamed_flow = FLOW_A.replace("t/a", "t/z");
    let dir = scratch(
        "plan-templates",
        &[
            ("a/flow.yaml", FLOW_A),
            ("a/templates/t/a.subject.j2", "A"),
            ("a/templates/t/a.html.j2", "<p>a</p>"),
            ("edited/flow.yaml", FLOW_A),
            ("edited/templates/t/a.subject.j2", "A"),
            ("edited/templates/t/a.html.j2", "<p>a, edited</p>"),
            ("renamed/flow.yaml", &renamed_flow),
            ("renamed/templates/t/z.subject.j2", "Z"),
            ("renamed/templates/t/z.html.j2", "<p>z</p>"),
        ],
    );
    let (config, v1) = store_with_a_waiting_journey(&dir, &dir.join("a"));
    let version = |folder: &str| {
        let (c, _) = aftercare::sequence::Catalog::load(&dir.join(folder)).unwrap();
        c.get("flow").unwrap().version.to_string()
    };
    let (v_edited, v_renamed) = (version("edited"), version("renamed"));
    assert!(v1 != v_edited && v1 != v_renamed && v_edited != v_renamed);
    let config = config.to_str().unwrap();

    let plan = |folder: &str| stdout(&aftercare(&["plan", folder, "-c", config], &dir));
    assert_eq!(
        plan("edited"),
        format!(
            "flow@{v1} step later (due): 1 journey(s): stay on {v1} (new journeys take {v_edited})\n\
             flow@{v1} -> {v_edited}: template t/a.html.j2 edited\n"
        )
    );
    assert_eq!(
        plan("renamed"),
        format!(
            "flow@{v1} step later (due): 1 journey(s): stay on {v1} (new journeys take {v_renamed})\n\
             flow@{v1} -> {v_renamed}: renamed/flow.yaml edited, template t/z.html.j2 added, \
             template t/z.subject.j2 added, template t/a.html.j2 removed, template t/a.subject.j2 removed\n"
        )
    );
    let validate = |folder: &str| stdout(&aftercare(&["validate", folder, "-c", config], &dir));
    assert_eq!(validate("edited"), "edited: 1 sequence(s) valid\n");
    assert_eq!(
        validate("renamed"),
        format!(
            "renamed: 1 sequence(s) valid\n\
             {}: warning: template `t/a` is no longer in the folder but 1 journey(s) in flight on \
             flow@{v1} send it: they render from the copy kept with their version; new journeys \
             cannot use it\n",
            dir.join("a/flow.yaml").display()
        )
    );
}

/// `aftercare forget ID` erases the customer from the configured store.
#[test]
fn forget_erases_a_customer_and_refuses_an_id_no_event_could_carry() {
    let dir = scratch(
        "forget",
        &[
            ("a/flow.yaml", FLOW_A),
            ("a/templates/t/a.subject.j2", "A"),
            ("a/templates/t/a.html.j2", "<p>a</p>"),
        ],
    );
    let (config, _) = store_with_a_waiting_journey(&dir, &dir.join("a"));
    let config = config.to_str().unwrap();
    assert_eq!(
        stdout(&aftercare(&["forget", "c1", "-c", config], &dir)),
        "customer c1 erased\n"
    );
    let gone = aftercare(&["customer", "c1", "-c", config], &dir);
    assert_eq!(gone.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&gone.stderr).starts_with("no customer `c1` in sqlite://"),
        "{gone:?}"
    );
    assert_eq!(
        stdout(&aftercare(&["forget", "c1", "-c", config], &dir)),
        "no customer c1 in the store: nothing of theirs but dead letters naming the id could be removed\n"
    );
    let empty = aftercare(&["forget", "", "-c", config], &dir);
    assert_eq!(
        (
            empty.status.code(),
            String::from_utf8_lossy(&empty.stderr).as_ref()
        ),
        (Some(2), "error: the customer id is empty\n")
    );
    let bad = aftercare(&["forget", "c1\nall", "-c", config], &dir);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr),
        "error: the customer id contains the control character U+000A at byte 2; identifiers may not contain control characters\n"
    );
}

/// A customer id may be an address (shops use them as ids): the engine's warnings name the
/// customer by its hash prefix, never in clear.
#[test]
fn an_address_used_as_a_customer_id_never_reaches_the_log() {
    let dir = scratch(
        "leak",
        &[
            (
                "seq/s.yaml",
                "name: s\njourney: per_order\ntrigger: { event: order.placed, when: \"customer.name + 1 > 0\" }\nsteps:\n  - id: a\n    email: { template: t/a }\n",
            ),
            ("seq/templates/t/a.subject.j2", "A"),
            ("seq/templates/t/a.html.j2", "<p>a</p>"),
            (
                "ev.jsonl",
                r#"{"specversion":"1.0","id":"p1","source":"/s","type":"order.placed","time":"2024-01-01T00:00:00Z","subject":"ann@example.com","data":{"order_id":"o1","total":"1","currency":"EUR","items":[],"customer":{"email":"ann@example.com","name":"Ann"}}}"#,
            ),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_aftercare"))
        .current_dir(&dir)
        .args(["simulate", "--events", "ev.jsonl", "--sequences", "seq"])
        .env("AFTERCARE_LOG", "warn")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("expression failed; taken as false customer_id=address:"),
        "{log}"
    );
    assert!(!log.contains("ann@example.com"), "{log}");
}

/// Review gating (asking only satisfied customers for a review) is against Google's and the
/// FTC's rules: `validate` accepts the file but warns, at the arm that reads the score.
#[test]
fn validate_warns_when_a_branch_gates_the_review_request_by_score() {
    let gate = "name: gate\ncategory: feedback\ntrigger: { event: feedback.submitted }\nsteps:\n  - id: decide\n    branch:\n      - { when: \"event.data.score >= 9\", goto: ask }\n      - { goto: done }\n  - id: ask\n    category: review\n    email: { template: t/a }\n  - id: done\n    exit: true\n";
    // Everyone is asked; low scores also go to support first: no gating.
    let fair = gate
        .replace("name: gate", "name: fair")
        .replace("goto: done }", "goto: support }")
        .replace("  - id: done\n    exit: true\n", "  - id: support\n    email: { template: t/a }\n  - id: ask-too\n    category: review\n    email: { template: t/a }\n");
    let dir = scratch(
        "gating",
        &[
            ("seq/gate.yaml", gate),
            ("seq/fair.yaml", &fair),
            ("seq/templates/t/a.subject.j2", "Hi"),
            ("seq/templates/t/a.html.j2", "<p>Hi</p>"),
        ],
    );
    let out = stdout(&aftercare(&["validate", "seq"], &dir));
    assert_eq!(
        out,
        format!(
            "seq: 2 sequence(s) valid\n{}:7:9: warning: this branch sends customers to a review request or away from it by their score (review gating); Google's review policy and the FTC's rule on consumer reviews forbid asking only the satisfied: ask everyone, and send low scores to support as well\n",
            Path::new("seq/gate.yaml").display()
        )
    );
}

/// `coupon verify` finds the step that gave a code on the timeline and checks it was derived
/// from that step under the signing key; a forged or unknown code is not authentic.
#[test]
fn coupon_verify_names_the_step_and_the_customer_and_refuses_other_codes() {
    use aftercare::engine::{Engine, Policy};
    use aftercare::service::apply::Applier;
    const KEY: &str = "test-signing-key-of-at-least-32-bytes";
    let seq = "name: tripod\ncategory: cross_sell\njourney: per_order\ntrigger: { event: order.delivered }\nsteps:\n  - id: offer\n    email: { template: t/a }\n    coupon: { generate: { prefix: TRI-, length: 8 } }\n";
    let dir = scratch(
        "coupon",
        &[
            ("seq/tripod.yaml", seq),
            ("seq/templates/t/a.subject.j2", "{{ coupon.code }}"),
            ("seq/templates/t/a.html.j2", "<p>{{ coupon.code }}</p>"),
        ],
    );
    let (catalog, diags) = aftercare::sequence::Catalog::load(&dir.join("seq")).unwrap();
    assert!(diags.is_empty(), "{diags:?}");
    let url = format!("sqlite://{}", dir.join("store.db").display());
    let mut store = aftercare::store::open(&url).unwrap();
    let event = r#"{"specversion":"1.0","id":"d1","source":"/shop","type":"order.delivered",
      "time":"2024-03-05T09:00:00Z","subject":"kim","data":{"order_id":"o1","customer":{"email":"kim@example.com"}}}"#;
    let event_text = event;
    let event =
        std::sync::Arc::new(aftercare::event::Event::from_structured(event.as_bytes()).unwrap());
    let policy = Policy {
        coupon_key: Some(aftercare::engine::coupon::key_from(KEY.as_bytes()).into()),
        ..Policy::default()
    };
    let applied = Applier::new(Engine::new(std::sync::Arc::new(catalog), policy))
        .apply(&mut *store, std::slice::from_ref(&event), event.time)
        .unwrap();
    let offer = applied
        .decisions
        .iter()
        .find(|d| d.email.is_some())
        .unwrap();
    let code = offer.subject.clone().unwrap();
    drop(store);
    std::fs::write(
        dir.join("aftercare.toml"),
        format!("[store]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let verify = |code: &str| {
        aftercare_env(
            &["coupon", "verify", code, "-c", "aftercare.toml"],
            &dir,
            &[("AFTERCARE_SIGNING_KEY", KEY)],
        )
    };
    let o = verify(&code.to_lowercase());
    assert_eq!(
        stdout(&o),
        format!(
            "{code}: given by tripod/offer to customer kim at 2024-03-05T09:00:00Z (journey {}, email); authentic: derived from that step under this signing key\n",
            offer.journey
        )
    );
    // Another installation's key: the line is there, the code is not theirs.
    let o = aftercare_env(
        &["coupon", "verify", &code, "-c", "aftercare.toml"],
        &dir,
        &[(
            "AFTERCARE_SIGNING_KEY",
            "another-signing-key-of-at-least-32-bytes",
        )],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("NOT authentic"));
    // `preview` shows the code `run` gives for the same event.
    std::fs::write(dir.join("ev.json"), event_text).unwrap();
    let o = aftercare_env(
        &[
            "preview",
            "tripod",
            "offer",
            "--event",
            "ev.json",
            "--sequences",
            "seq",
            "-c",
            "aftercare.toml",
        ],
        &dir,
        &[("AFTERCARE_SIGNING_KEY", KEY)],
    );
    assert!(
        stdout(&o).starts_with(&format!("Subject: {code}\n")),
        "{}",
        stdout(&o)
    );
    // A code no step gave.
    let o = verify("TRI-00000000");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("TRI-00000000: given by no step"));
    std::fs::remove_dir_all(&dir).unwrap();
}
