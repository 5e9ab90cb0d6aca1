//! `aftercare publish --events FILE`: sends a JSON Lines file of CloudEvents to Kafka, as a
//! shop's backend would (structured mode, keyed by customer). For quickstarts and tests.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[derive(clap::Args)]
pub struct Args {
    /// JSON Lines file of structured CloudEvents.
    #[arg(long)]
    events: PathBuf,
    /// Topic for every event (default: `support.*` and `feedback.*` types to the second of
    /// `kafka.topics`, everything else to the first).
    #[arg(long)]
    topic: Option<String>,
    /// Only the first N lines.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.as_deref())?;
    let producer = producer(&config.kafka.brokers)?;
    let topics = Topics::new(&config.kafka.topics, args.topic.clone());
    let file = std::fs::File::open(&args.events)
        .with_context(|| format!("opening {}", args.events.display()))?;
    let mut sent = 0usize;
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if args.limit.is_some_and(|n| sent >= n) {
            break;
        }
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let kind = value["type"].as_str().unwrap_or_default();
        let key = value["subject"].as_str().unwrap_or_default().to_string();
        send(&producer, topics.of(kind), &key, &line)?;
        sent += 1;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing to Kafka")?;
    eprintln!("published {sent} event(s)");
    Ok(ExitCode::SUCCESS)
}

fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .create()
        .context("creating the Kafka producer")
}

/// Where events go: `--topic`, or by type to the first or second of `kafka.topics`.
struct Topics {
    fixed: Option<String>,
    orders: String,
    support: String,
}

impl Topics {
    fn new(topics: &[String], fixed: Option<String>) -> Topics {
        let orders = topics.first().cloned().unwrap_or_else(|| "orders".into());
        let support = topics.get(1).cloned().unwrap_or_else(|| orders.clone());
        Topics {
            fixed,
            orders,
            support,
        }
    }

    /// The topic for an event of type `kind`.
    fn of(&self, kind: &str) -> &str {
        match &self.fixed {
            Some(t) => t,
            None if kind.starts_with("support.") || kind.starts_with("feedback.") => &self.support,
            None => &self.orders,
        }
    }
}

/// Queues `line` to `topic` under `key`, waiting while the producer's queue is full.
fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &str,
    line: &str,
) -> anyhow::Result<()> {
    let headers = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: Some("application/cloudevents+json"),
    });
    let mut record = BaseRecord::to(topic)
        .key(key)
        .payload(line)
        .headers(headers);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                std::thread::sleep(Duration::from_millis(5));
                record = r;
            }
            Err((e, _)) => anyhow::bail!("publishing: {e}"),
        }
    }
}
