//! Experiments through the outbox to a real SMTP server (SPEC §8): a held-out customer gets
//! every transactional email and no marketing one; a treated one gets its variant, named in
//! `X-Aftercare-Variant`.

use super::*;

const TIPS: &str = "name: tips\ncategory: education\ntrigger: { event: customer.updated }\nexperiment: { holdout: 50%, salt: m1, measure: [{ name: again, event: order.placed, within: 30d }] }\nsteps:\n  - id: notice\n    category: transactional\n    email: { template: tips/notice }\n  - id: tip\n    email: { template: tips/a }\n    variants:\n      - { id: a, weight: 1 }\n      - { id: b, weight: 1, email: { template: tips/b } }\n";

/// SPEC §8's hash, written again here: the first 8 bytes, big-endian, of SHA-256 of `text`.
fn spec_hash(text: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap())
}

#[test]
fn held_out_customers_get_every_transactional_email_and_no_marketing_one() {
    let port = free_port();
    let server = SmtpServer::start(port, &scratch("experiment"), &[]);
    let mut rig = rig(port, Tls::None, None);
    let dir = rig.config.sequences.dir.clone();
    std::fs::write(dir.join("tips.yaml"), TIPS).unwrap();
    let tips = dir.join("templates/tips");
    std::fs::create_dir_all(&tips).unwrap();
    for (name, subject) in [
        ("notice", "Your account, {{ customer.name }}"),
        ("a", "Tip A for {{ customer.name }}"),
        ("b", "Tip B for {{ customer.name }}"),
    ] {
        std::fs::write(tips.join(format!("{name}.subject.j2")), subject).unwrap();
        std::fs::write(
            tips.join(format!("{name}.html.j2")),
            "<p>{{ customer.name }}</p>",
        )
        .unwrap();
    }
    let catalog = aftercare::service::load_catalog(&dir).unwrap();
    rig.applier = Applier::new(Engine::new(Arc::new(catalog), Policy::default()))
        .signing(Signer::new(KEY.as_bytes()));

    let customers: Vec<String> = (1..=8).map(|i| format!("c{i}")).collect();
    for c in &customers {
        rig.apply(&[placed(c, &format!("o-{c}"), c, &format!("{c}@example.com"))]);
        rig.apply(&[event("customer.updated", &format!("u-{c}"), c, json!({}))]);
    }
    let held: Vec<&String> = customers
        .iter()
        .filter(|c| spec_hash(&format!("m1:tips:{c}")) % 10_000 < 5_000)
        .collect();
    assert!((1..8).contains(&held.len()), "both groups: {held:?}");
    // Receipt and notice for everyone, the tip for the treated only.
    let expected = 2 * customers.len() + (customers.len() - held.len());
    rig.send_until("every email sent", |c| c["emails sent"] == expected as i64);
    let messages = server.messages();
    assert_eq!(messages.len(), expected);
    for c in &customers {
        let to = format!("<{c}@example.com>");
        let mine: Vec<Vec<(String, String)>> = messages
            .iter()
            .map(|m| headers(m))
            .filter(|h| header(h, "To").is_some_and(|t| t.ends_with(&to)))
            .collect();
        let subjects: std::collections::BTreeSet<String> = mine
            .iter()
            .map(|h| header(h, "Subject").unwrap().to_string())
            .collect();
        let mut want: std::collections::BTreeSet<String> = [
            format!("Thanks for order o-{c}"),
            format!("Your account, {c}"),
        ]
        .into();
        if held.contains(&c) {
            assert_eq!(subjects, want, "{c} is held out");
            assert!(
                rig.timeline(c)
                    .iter()
                    .any(|(action, reason)| action == "holdout"
                        && reason.starts_with("held out: bucket ")),
                "{c}: {:?}",
                rig.timeline(c)
            );
            continue;
        }
        let variant = if spec_hash(&format!("m1:tips:tip:{c}")) % 2 < 1 {
            "a"
        } else {
            "b"
        };
        want.insert(format!("Tip {} for {c}", variant.to_uppercase()));
        assert_eq!(subjects, want, "{c} is treated");
        let tip = mine
            .iter()
            .find(|h| header(h, "X-Aftercare-Step") == Some("tip"))
            .unwrap();
        assert_eq!(header(tip, "X-Aftercare-Variant"), Some(variant), "{c}");
        // Only a split step's email names a variant.
        assert!(
            mine.iter()
                .filter(|h| header(h, "X-Aftercare-Step") != Some("tip"))
                .all(|h| header(h, "X-Aftercare-Variant").is_none())
        );
    }
}
