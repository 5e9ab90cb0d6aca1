//! Golden simulate cases, in the users' own terms: each `tests/fixtures/<case>/` holds
//! `events.jsonl`, `sequences/`, optionally `config.toml` and `args` (extra flags), and the
//! expected `expected.jsonl` (stdout) and `expected.stderr`. Each case runs through the real
//! binary with one thread and with three: both must print exactly the expected lines.

use std::path::Path;
use std::process::Command;

fn run_case(dir: &Path, threads: &str) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aftercare"));
    cmd.current_dir(dir).args([
        "simulate",
        "--events",
        "events.jsonl",
        "--sequences",
        "sequences",
        "--threads",
        threads,
    ]);
    if dir.join("config.toml").exists() {
        cmd.args(["-c", "config.toml"]);
    }
    if let Ok(args) = std::fs::read_to_string(dir.join("args")) {
        cmd.args(args.split_whitespace());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn golden_simulate_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 3, "fixtures missing in {}", root.display());
    for dir in cases {
        let expected = std::fs::read_to_string(dir.join("expected.jsonl")).unwrap();
        let expected_err = std::fs::read_to_string(dir.join("expected.stderr")).unwrap();
        for threads in ["1", "3"] {
            let (out, err) = run_case(&dir, threads);
            // More threads than cores are capped, and said so; the output is the same.
            let err: String = err
                .lines()
                .filter(|l| !l.starts_with("--threads "))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(out, expected, "{} with {threads} thread(s)", dir.display());
            assert_eq!(
                err,
                expected_err,
                "{} with {threads} thread(s)",
                dir.display()
            );
        }
    }
}
