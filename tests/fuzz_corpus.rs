//! Replays the committed fuzz corpora (`fuzz/corpus/TARGET/`) through the fuzz targets'
//! bodies: every input the fuzzer found interesting stays a regression test, run by
//! `cargo test` without the fuzzer (RELIABILITY.md, *Hostile input*, has the fuzzing runs).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    assert!(
        inputs.len() >= 10,
        "{}: only {} inputs",
        dir.display(),
        inputs.len()
    );
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} failed", path.display());
    }
}

#[test]
fn structured_events() {
    replay("event_structured", aftercare::fuzzing::event_structured);
}

#[test]
fn binary_events() {
    replay("event_binary", aftercare::fuzzing::event_binary);
}

#[test]
fn sequence_files() {
    replay("sequence", aftercare::fuzzing::sequence);
}

#[test]
fn templates() {
    replay("template", aftercare::fuzzing::template);
}
