//! A real webhook receiver for tests: Python's http.server with signatures checked by the
//! `standardwebhooks` package, driven by `tests/webhooks/receiver.py`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;

use serde_json::Value;

/// A signing secret in the Standard Webhooks form.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The receiver on `port`, answering with `answers` (`503,200`: 503 once, then 200); stopped
/// on drop.
pub struct Receiver {
    child: Child,
    out: PathBuf,
    pub port: u16,
}

impl Receiver {
    pub fn start(port: u16, out: &Path, answers: &str, secret: &str) -> Receiver {
        let _ = std::fs::remove_dir_all(out);
        let out_arg = out.display().to_string();
        let args = ["--answer", answers, "--secret", secret, "--out", &out_arg];
        let child = super::smtp::python_server(
            "tests/webhooks/receiver.py",
            port,
            &args,
            "standardwebhooks",
        );
        Receiver {
            child,
            out: out.to_path_buf(),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// Every post the receiver saw, in order.
    pub fn log(&self) -> Vec<Value> {
        super::smtp::jsonl(&self.out.join("log.jsonl"))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
