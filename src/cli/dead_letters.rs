//! `aftercare dead-letters list|show ID|replay`: the messages that could not be applied, as
//! the store keeps them (whole, even when the dead-letter topic has them cut short).
//!
//! `replay` sends each back to the topic it came from with its key, value and headers as read
//! (plus `aftercare.replay.of`), so it goes through the normal path: applied once if it is
//! good now (a customer state mended, say), deduplicated by `source` and `id` if it was
//! applied meanwhile, and dead-lettered again with its reason if it is still bad.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::clock::{Clock as _, SystemClock};
use crate::service::deadletters::Reports;
use crate::store::{DeadLetter, DeadLetterQuery, Store, StoredDeadLetter};
use crate::time::{Period, rfc3339};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// One line per dead letter, newest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter whole: where it came from, why, its headers and its value.
    Show {
        id: i64,
        /// Write the value's bytes to stdout, nothing else.
        #[arg(long)]
        raw: bool,
    },
    /// Send dead letters back to the topics they came from.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// These dead letters only (ids from `list`).
        ids: Vec<i64>,
    },
}

#[derive(clap::Args)]
struct Filter {
    /// Recorded at or after: an RFC 3339 time, or a duration back from now (`2h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Whose reason or reason class contains this text (`identifier`, `data.total`).
    #[arg(long)]
    reason: Option<String>,
}

impl Filter {
    fn query(&self, limit: usize) -> anyhow::Result<DeadLetterQuery> {
        Ok(DeadLetterQuery {
            since: self.since.as_deref().map(since).transpose()?,
            reason: self.reason.clone(),
            limit,
        })
    }
}

fn since(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    match text.parse::<Period>() {
        Ok(p) => Ok(SystemClock.now() - p.0),
        Err(_) => bail!("--since `{text}`: give an RFC 3339 time or a duration such as 2h or 7d"),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.as_deref())?;
    let mut store = crate::store::open_small(&config.store.url).context("opening the store")?;
    match args.command {
        Command::List { filter, limit } => list(&mut *store, &filter.query(limit)?),
        Command::Show { id, raw } => show(&mut *store, id, raw),
        Command::Replay { filter, ids } => {
            let letters = if ids.is_empty() {
                store.dead_letters(&filter.query(0)?)?
            } else {
                let mut found = Vec::new();
                for id in ids {
                    match store.dead_letter(id)? {
                        Some(d) => found.push(d),
                        None => bail!("no dead letter {id}"),
                    }
                }
                found
            };
            replay(&mut *store, &config.kafka.brokers, letters)
        }
    }
}

fn list(store: &mut dyn Store, query: &DeadLetterQuery) -> anyhow::Result<ExitCode> {
    let letters = store.dead_letters(query)?;
    for d in &letters {
        let l = &d.letter;
        println!(
            "{}\t{}\t{}\t{}/{}@{}\t{} bytes\t{}\t{}",
            d.id,
            rfc3339(d.at),
            d.state(),
            l.topic,
            l.partition,
            l.offset,
            l.value.len(),
            l.class,
            crate::redact::text(&l.reason)
        );
    }
    eprintln!("{} dead letter(s)", letters.len());
    Ok(ExitCode::SUCCESS)
}

fn show(store: &mut dyn Store, id: i64, raw: bool) -> anyhow::Result<ExitCode> {
    let Some(d) = store.dead_letter(id)? else {
        bail!("no dead letter {id}");
    };
    let l = &d.letter;
    if raw {
        use std::io::Write as _;
        std::io::stdout().write_all(&l.value)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("dead letter {}", d.id);
    println!("recorded:  {}", rfc3339(d.at));
    println!(
        "from:      {} partition {} offset {}",
        l.topic, l.partition, l.offset
    );
    println!("reason:    {}", l.reason);
    println!("class:     {}", l.class);
    println!("topic:     {}", topic_state(&d));
    if let Some(at) = d.replayed_at {
        println!("replayed:  {}", rfc3339(at))
    }
    print_message(l);
    Ok(ExitCode::SUCCESS)
}

/// Where the dead letter stands with the dead-letter topic: published when, or the attempts.
fn topic_state(d: &StoredDeadLetter) -> String {
    match (d.published_at, d.state()) {
        (Some(at), s) => format!("{s} at {}", rfc3339(at)),
        (None, s) => match &d.last_error {
            Some(e) => format!("{s} ({} attempt(s); last: {e})", d.attempts),
            None => s.to_string(),
        },
    }
}

/// The message as read: its key, headers and value (cut short past 4096 bytes).
fn print_message(l: &DeadLetter) {
    if let Some(k) = &l.key {
        println!("key:       {}", printable(k, 200));
    }
    for (k, v) in &l.headers {
        println!("header:    {k}: {}", printable(v, 200));
    }
    println!("value:     {} bytes", l.value.len());
    println!("{}", printable(&l.value, 4096));
}

/// Bytes as text when they are UTF-8 (control characters escaped), else as hex; cut at
/// `max` bytes.
fn printable(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let more = if bytes.len() > max {
        format!(
            " … ({} more bytes; --raw writes them all)",
            bytes.len() - max
        )
    } else {
        String::new()
    };
    let text = match std::str::from_utf8(cut) {
        Ok(s) => s.chars().flat_map(char::escape_debug).collect::<String>(),
        Err(e) if e.valid_up_to() + 4 > cut.len() && e.error_len().is_none() => {
            // Cut inside a character: show what is whole.
            String::from_utf8_lossy(&cut[..e.valid_up_to()])
                .chars()
                .flat_map(char::escape_debug)
                .collect()
        }
        Err(_) => format!(
            "(not UTF-8) {}",
            cut.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    };
    format!("{text}{more}")
}

fn replay(
    store: &mut dyn Store,
    brokers: &str,
    letters: Vec<StoredDeadLetter>,
) -> anyhow::Result<ExitCode> {
    if letters.is_empty() {
        eprintln!("no dead letters to replay");
        return Ok(ExitCode::SUCCESS);
    }
    let producer: BaseProducer<Reports> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "1000000000")
        .create_with_context(Reports::default())
        .context("creating the Kafka producer")?;
    for (i, d) in letters.iter().enumerate() {
        let id = d.id.to_string();
        send(&producer, record(&d.letter, &id, i), d.id)?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("waiting for the broker")?;
    settle(store, &letters, producer.context().take())
}

/// Marks the dead letters the broker took as replayed, and reports the others; a failure
/// when any was not replayed.
fn settle(
    store: &mut dyn Store,
    letters: &[StoredDeadLetter],
    reports: Vec<(usize, rdkafka::error::KafkaResult<()>)>,
) -> anyhow::Result<ExitCode> {
    let mut replayed = Vec::new();
    let mut failed = 0;
    for (i, result) in reports {
        match result {
            Ok(()) => replayed.push(letters[i].id),
            Err(e) => {
                failed += 1;
                eprintln!("dead letter {} not replayed: {e}", letters[i].id);
            }
        }
    }
    store.mark_replayed(&replayed, SystemClock.now())?;
    eprintln!("replayed {} dead letter(s) to their topics", replayed.len());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Dead letter `l` as it was read, to its topic, with `aftercare.replay.of` its `id`; the
/// delivery report names it by `i`.
fn record<'a>(l: &'a DeadLetter, id: &'a str, i: usize) -> BaseRecord<'a, [u8], [u8], Box<usize>> {
    let mut headers = OwnedHeaders::new_with_capacity(l.headers.len() + 1);
    for (k, v) in &l.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    headers = headers.insert(Header {
        key: "aftercare.replay.of",
        value: Some(id),
    });
    let mut record: BaseRecord<'_, [u8], [u8], Box<usize>> =
        BaseRecord::with_opaque_to(&l.topic, Box::new(i))
            .payload(l.value.as_slice())
            .headers(headers);
    if let Some(k) = &l.key {
        record = record.key(k.as_slice());
    }
    record
}

/// Queues `record` (dead letter `id`), waiting while the producer's queue is full.
fn send(
    producer: &BaseProducer<Reports>,
    record: BaseRecord<'_, [u8], [u8], Box<usize>>,
    id: i64,
) -> anyhow::Result<()> {
    crate::service::deadletters::send_waiting(producer, record)
        .map_err(|e| anyhow::anyhow!("replaying dead letter {id}: {e}"))
}
