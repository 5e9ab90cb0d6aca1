//! The bodies of the fuzz targets (`fuzz/fuzz_targets/`), here so that `cargo test` replays
//! their committed corpora (`tests/fuzz_corpus.rs`) with the same code the fuzzer runs.
//!
//! Each takes arbitrary bytes, feeds them to one untrusted-input path, and checks what must
//! hold whatever the bytes: no panic, and the invariants SPEC §7 promises of what gets in.
//! Time and memory are bounded by the fuzzer (`-timeout`, `-rss_limit_mb`).

use std::sync::OnceLock;

use crate::event::{Event, EventData};
use crate::sequence::Catalog;
use crate::template::Templates;

/// A structured-mode message.
pub fn event_structured(data: &[u8]) {
    check_event(Event::from_structured(data));
}

/// A binary-mode message: the bytes up to each `0xff` are the next `ce_` header's value
/// (specversion, id, source, type, time, subject), the rest the message value.
pub fn event_binary(data: &[u8]) {
    const NAMES: [&str; 6] = [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_subject",
    ];
    let mut parts = data.splitn(7, |b| *b == 0xff);
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    for name in NAMES {
        if let Some(v) = parts.next() {
            headers.push((name, v));
        }
    }
    let value = parts.next().unwrap_or_default();
    check_event(Event::from_binary(headers, value));
}

fn check_event(parsed: Result<Event, crate::event::EventError>) {
    match parsed {
        Ok(e) => {
            for id in [&e.id, &e.source, &e.kind, &*e.subject] {
                assert!(
                    id.len() <= crate::event::MAX_ID_BYTES,
                    "identifier too long"
                );
                assert!(
                    !id.chars().any(|c| c.is_ascii_control()),
                    "control character"
                );
            }
            if let Some(o) = e.order_id() {
                assert!(o.len() <= crate::event::MAX_ID_BYTES);
            }
            assert!(crate::time::fires(e.time), "time past 9999");
            if let EventData::OrderPlaced(o) = &e.data {
                // Exact amounts print and read back the same.
                let text = o.total.to_string();
                assert_eq!(
                    crate::event::Money::parse_decimal(&text).map(|m| m.to_string()),
                    Ok(text)
                );
            }
        }
        Err(e) => {
            // The reason becomes a Kafka header and a store column: printable, bounded.
            let reason = e.to_string();
            assert!(!reason.is_empty());
            assert!(!reason.contains('\0'), "NUL in a reason");
            assert!(reason.len() < 4096, "reason of {} bytes", reason.len());
        }
    }
}

/// A sequence file, compiled beside the starter templates.
pub fn sequence(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let (templates, tdiags) = Templates::from_files("templates", starter_templates().to_vec());
    let files = vec![("f.yaml".to_string(), source.to_string())];
    let (catalog, diags) = Catalog::from_sources(files, templates, tdiags);
    for d in &diags {
        assert!(d.pos.line >= 1 && d.pos.col >= 1, "position {:?}", d.pos);
    }
    if diags.is_empty() {
        assert!(catalog.sequences().len() <= 1);
    }
}

/// A template body (`f.html.j2`, with a subject), loaded and rendered against the sample
/// customer within its budget.
pub fn template(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let files = vec![
        (
            "f.subject.j2".to_string(),
            "Hello {{ customer.name }}".to_string(),
        ),
        ("f.html.j2".to_string(), source.to_string()),
    ];
    let (templates, _) = Templates::from_files("templates", files);
    let _ = templates.check_budget(&crate::sequence::budget::sample_context());
    let _ = templates.render(
        "f",
        Some("en-US"),
        &crate::sequence::budget::sample_context(),
    );
}

/// The starter set's templates, read once.
fn starter_templates() -> &'static [(String, String)] {
    static T: OnceLock<Vec<(String, String)>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sequences/templates");
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let (Ok(rel), Ok(text)) =
                    (p.strip_prefix(&dir), std::fs::read_to_string(&p))
                {
                    out.push((rel.to_string_lossy().replace('\\', "/"), text));
                }
            }
        }
        out.sort();
        out
    })
}
