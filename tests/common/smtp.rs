//! A real SMTP server for tests: aiosmtpd (PyPI) driven by `tests/smtp/server.py`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;

use serde_json::Value;

/// aiosmtpd on a free port, with the faults asked for; stopped on drop.
pub struct SmtpServer {
    pub child: Child,
    pub out: PathBuf,
}

/// A port no other test of this process uses, free now. Handed out from a counter rather
/// than by the kernel: the outage test leaves its port closed for a while, and an ephemeral
/// port could meanwhile go to another test's server. Kept below the kernel's ephemeral range
/// (32768 and up on Linux), or an outgoing connection may take the port while it is closed.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 10_000 + (std::process::id() % 2_000) as u16 * 10;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A Python test server of this repository (`script`) on `port`, once it says `ready PORT`;
/// `package` is what it needs from PyPI.
pub fn python_server(script: &str, port: u16, args: &[&str], package: &str) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--port", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("python3 with {package} (pip install {package}) is needed: {e}")
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(
        line.trim(),
        format!("ready {port}"),
        "the {package} server did not start"
    );
    child
}

/// The JSON lines a test server wrote to `path` (none yet: empty).
pub fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

impl SmtpServer {
    pub fn start(port: u16, out: &Path, args: &[&str]) -> SmtpServer {
        let out_arg = out.display().to_string();
        let mut all = vec!["--out", out_arg.as_str()];
        all.extend_from_slice(args);
        let child = python_server("tests/smtp/server.py", port, &all, "aiosmtpd");
        SmtpServer {
            child,
            out: out.to_path_buf(),
        }
    }

    /// Every DATA attempt the server saw.
    pub fn log(&self) -> Vec<Value> {
        jsonl(&self.out.join("log.jsonl"))
    }

    /// The accepted messages, in order.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
