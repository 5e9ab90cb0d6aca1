//! `aftercare run` inside the test process, against a real Kafka protocol (librdkafka's mock
//! cluster) and a real store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aftercare::config::Config;
use aftercare::service::{self, Options, Shutdown, Stats};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// A sequences directory with the default test templates.
pub fn sequences_dir(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aftercare-seq-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (path, text) in files {
        write(&dir.join(path), text);
    }
    for (path, text) in super::default_templates() {
        write(&dir.join("templates").join(path), &text);
    }
    dir
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

pub fn config(
    brokers: &str,
    group: &str,
    store_url: &str,
    sequences: &Path,
    mail: &Path,
) -> Config {
    let mut c = Config::default();
    c.kafka.brokers = brokers.to_string();
    c.kafka.group_id = group.to_string();
    c.kafka.session_timeout_ms = 6000;
    c.kafka.max_poll_interval_ms = 6000;
    c.store.url = store_url.to_string();
    c.sequences.dir = sequences.to_path_buf();
    c.mail.file.dir = mail.to_path_buf();
    c.http.listen = "127.0.0.1:0".into();
    c
}

/// A running service; stopped (and joined) on `stop`.
pub struct Running {
    stop: Shutdown,
    /// Live counters of this instance.
    pub stats: Arc<Stats>,
    handle: Option<std::thread::JoinHandle<aftercare::service::StartResult<()>>>,
}

pub fn start(config: Config) -> Running {
    start_with(config, Options::default())
}

pub fn start_with(config: Config, options: Options) -> Running {
    let stop = Shutdown::new();
    let stats = Arc::new(Stats::default());
    let (s, st) = (stop.clone(), stats.clone());
    let handle = std::thread::spawn(move || service::run(config, options, s, st));
    Running {
        stop,
        stats,
        handle: Some(handle),
    }
}

impl Running {
    /// Stops as SIGTERM would and returns the counters; fails if it took more than 10 s.
    pub fn stop(mut self) -> Arc<Stats> {
        self.stop.trigger();
        let started = Instant::now();
        self.handle.take().unwrap().join().unwrap().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "shutdown took {:?}",
            started.elapsed()
        );
        self.stats.clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.trigger();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

pub fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.max.bytes", "4000000")
        .create()
        .unwrap()
}

/// Sends one message and waits for the broker's acknowledgement.
pub fn send(
    p: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    p.send(BaseRecord::to(topic).key(key).payload(payload).headers(h))
        .map_err(|(e, _)| e)
        .unwrap();
}

pub fn flush(p: &ThreadedProducer<DefaultProducerContext>) {
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Polls `cond` until it holds or `secs` pass; the condition is the synchronisation, not time.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A dead letter as read back: key, value and headers.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Reads `count` messages from the start of `topic`.
pub fn read_topic(brokers: &str, topic: &str, count: usize) -> Vec<DeadLetter> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    wait_until(60, &format!("{count} message(s) on {topic}"), || {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(DeadLetter {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        out.len() >= count
    });
    out
}
